package httpsig

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
)

// A minimal parser and serializer for RFC 8941 Structured Field Values:
// the subset RFC 9421 signatures and RFC 9530 digests use (dictionaries
// whose members are inner lists or bare items, with parameters; integers,
// strings, tokens, byte sequences and booleans). Decimals are refused.

type sfKind uint8

const (
	sfInteger sfKind = iota + 1
	sfString
	sfToken
	sfBytes
	sfBool
)

// sfBare is a bare item.
type sfBare struct {
	kind sfKind
	i    int64  // sfInteger
	s    string // sfString, sfToken
	b    []byte // sfBytes
	bo   bool   // sfBool
}

type sfParam struct {
	key string
	val sfBare
}

type sfItem struct {
	val    sfBare
	params []sfParam
}

// sfMember is a dictionary member: an inner list (inner is true) or an item.
type sfMember struct {
	key    string
	inner  bool
	list   []sfItem
	item   sfBare
	params []sfParam
}

var errSF = errors.New("malformed structured field")

type sfParser struct {
	s string
	i int
}

func (p *sfParser) eof() bool { return p.i >= len(p.s) }

func (p *sfParser) peek() byte {
	if p.eof() {
		return 0
	}
	return p.s[p.i]
}

func (p *sfParser) skipSP() {
	for !p.eof() && p.s[p.i] == ' ' {
		p.i++
	}
}

func (p *sfParser) skipOWS() {
	for !p.eof() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// parseSFDictionary parses a dictionary. Unlike RFC 8941, which lets a
// later member replace an earlier one of the same name, a repeated key is
// an error: for signatures it is ambiguous.
func parseSFDictionary(s string) ([]sfMember, error) {
	p := &sfParser{s: s}
	p.skipSP()
	var out []sfMember
	seen := map[string]bool{}
	for !p.eof() {
		key, err := p.key()
		if err != nil {
			return nil, err
		}
		if seen[key] {
			return nil, errSF
		}
		seen[key] = true
		m := sfMember{key: key}
		if p.peek() == '=' {
			p.i++
			if p.peek() == '(' {
				m.inner = true
				if m.list, err = p.innerList(); err != nil {
					return nil, err
				}
			} else if m.item, err = p.bare(); err != nil {
				return nil, err
			}
		} else {
			m.item = sfBare{kind: sfBool, bo: true}
		}
		if m.params, err = p.params(); err != nil {
			return nil, err
		}
		out = append(out, m)
		p.skipOWS()
		if p.eof() {
			break
		}
		if p.peek() != ',' {
			return nil, errSF
		}
		p.i++
		p.skipOWS()
		if p.eof() {
			return nil, errSF // trailing comma
		}
	}
	if p.i < len(p.s) || len(out) == 0 {
		return nil, errSF
	}
	return out, nil
}

func (p *sfParser) innerList() ([]sfItem, error) {
	p.i++ // '('
	var items []sfItem
	for {
		p.skipSP()
		if p.eof() {
			return nil, errSF
		}
		if p.peek() == ')' {
			p.i++
			return items, nil
		}
		v, err := p.bare()
		if err != nil {
			return nil, err
		}
		ps, err := p.params()
		if err != nil {
			return nil, err
		}
		items = append(items, sfItem{val: v, params: ps})
		if c := p.peek(); c != ' ' && c != ')' {
			return nil, errSF
		}
	}
}

func (p *sfParser) params() ([]sfParam, error) {
	var out []sfParam
	for p.peek() == ';' {
		p.i++
		p.skipSP()
		key, err := p.key()
		if err != nil {
			return nil, err
		}
		for _, q := range out {
			if q.key == key {
				return nil, errSF
			}
		}
		v := sfBare{kind: sfBool, bo: true}
		if p.peek() == '=' {
			p.i++
			if v, err = p.bare(); err != nil {
				return nil, err
			}
		}
		out = append(out, sfParam{key: key, val: v})
	}
	return out, nil
}

func isLCAlpha(c byte) bool { return 'a' <= c && c <= 'z' }
func isDigit(c byte) bool   { return '0' <= c && c <= '9' }
func isAlpha(c byte) bool   { return isLCAlpha(c) || 'A' <= c && c <= 'Z' }

func (p *sfParser) key() (string, error) {
	start := p.i
	if c := p.peek(); !isLCAlpha(c) && c != '*' {
		return "", errSF
	}
	for !p.eof() {
		c := p.s[p.i]
		if !isLCAlpha(c) && !isDigit(c) && c != '_' && c != '-' && c != '.' && c != '*' {
			break
		}
		p.i++
	}
	return p.s[start:p.i], nil
}

func (p *sfParser) bare() (sfBare, error) {
	switch c := p.peek(); {
	case c == '-' || isDigit(c):
		return p.integer()
	case c == '"':
		return p.str()
	case c == '*' || isAlpha(c):
		return p.token(), nil
	case c == ':':
		return p.bytes()
	case c == '?':
		if p.i+1 < len(p.s) && (p.s[p.i+1] == '0' || p.s[p.i+1] == '1') {
			v := sfBare{kind: sfBool, bo: p.s[p.i+1] == '1'}
			p.i += 2
			return v, nil
		}
	}
	return sfBare{}, errSF
}

func (p *sfParser) integer() (sfBare, error) {
	start := p.i
	if p.peek() == '-' {
		p.i++
	}
	digits := p.i
	for !p.eof() && isDigit(p.s[p.i]) {
		p.i++
	}
	n := p.i - digits
	if n == 0 || n > 15 || p.peek() == '.' { // decimals are not supported
		return sfBare{}, errSF
	}
	v, err := strconv.ParseInt(p.s[start:p.i], 10, 64)
	if err != nil {
		return sfBare{}, errSF
	}
	return sfBare{kind: sfInteger, i: v}, nil
}

func (p *sfParser) str() (sfBare, error) {
	p.i++ // '"'
	var b strings.Builder
	for !p.eof() {
		c := p.s[p.i]
		p.i++
		switch {
		case c == '\\':
			if p.eof() || (p.s[p.i] != '"' && p.s[p.i] != '\\') {
				return sfBare{}, errSF
			}
			b.WriteByte(p.s[p.i])
			p.i++
		case c == '"':
			return sfBare{kind: sfString, s: b.String()}, nil
		case c < 0x20 || c > 0x7e:
			return sfBare{}, errSF
		default:
			b.WriteByte(c)
		}
	}
	return sfBare{}, errSF
}

func (p *sfParser) token() sfBare {
	start := p.i
	p.i++
	for !p.eof() {
		c := p.s[p.i]
		if !(c < 0x80 && isTokenChar(rune(c))) && c != ':' && c != '/' {
			break
		}
		p.i++
	}
	return sfBare{kind: sfToken, s: p.s[start:p.i]}
}

func (p *sfParser) bytes() (sfBare, error) {
	p.i++ // ':'
	end := strings.IndexByte(p.s[p.i:], ':')
	if end < 0 {
		return sfBare{}, errSF
	}
	enc := p.s[p.i : p.i+end]
	p.i += end + 1
	if strings.TrimLeft(enc, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != "" {
		return sfBare{}, errSF
	}
	dec, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		// RFC 8941 asks parsers to tolerate missing padding.
		if dec, err = base64.RawStdEncoding.DecodeString(enc); err != nil {
			return sfBare{}, errSF
		}
	}
	return sfBare{kind: sfBytes, b: dec}, nil
}

// serialize appends the RFC 8941 serialization of v.
func (v sfBare) serialize(b *strings.Builder) {
	switch v.kind {
	case sfInteger:
		b.WriteString(strconv.FormatInt(v.i, 10))
	case sfString:
		b.WriteByte('"')
		for i := 0; i < len(v.s); i++ {
			if c := v.s[i]; c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(v.s[i])
		}
		b.WriteByte('"')
	case sfToken:
		b.WriteString(v.s)
	case sfBytes:
		b.WriteByte(':')
		b.WriteString(base64.StdEncoding.EncodeToString(v.b))
		b.WriteByte(':')
	case sfBool:
		if v.bo {
			b.WriteString("?1")
		} else {
			b.WriteString("?0")
		}
	}
}

func serializeParams(b *strings.Builder, ps []sfParam) {
	for _, p := range ps {
		b.WriteByte(';')
		b.WriteString(p.key)
		if p.val.kind != sfBool || !p.val.bo {
			b.WriteByte('=')
			p.val.serialize(b)
		}
	}
}

// serializeInnerList returns the serialization of an inner list with its
// parameters, as used for @signature-params.
func serializeInnerList(items []sfItem, params []sfParam) string {
	var b strings.Builder
	b.WriteByte('(')
	for i, it := range items {
		if i > 0 {
			b.WriteByte(' ')
		}
		it.val.serialize(&b)
		serializeParams(&b, it.params)
	}
	b.WriteByte(')')
	serializeParams(&b, params)
	return b.String()
}

// validSFString reports whether s can be serialized as an sf-string.
func validSFString(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
