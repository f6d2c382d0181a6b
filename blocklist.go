package relay

// The block list's entries (severity, public reason, private note) and
// its file formats: Mastodon's CSV and plain text.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Severity is how hard a DomainBlock blocks, with Mastodon's names.
type Severity string

// Severities of a DomainBlock.
const (
	// SeveritySuspend (also the zero value) blocks the domain: the relay
	// has nothing to do with it (see Relay.BlockDomain).
	SeveritySuspend Severity = "suspend"
	// SeveritySilence (Mastodon's "limit") lets the domain's servers
	// subscribe and receive, but nothing they send is relayed: they are
	// receive-only (see store.ModeReceiveOnly), whatever their mode says.
	SeveritySilence Severity = "silence"
	// SeverityNoop keeps the entry on the list (for its reason, and so that
	// an exported list round-trips) without any effect.
	SeverityNoop Severity = "noop"
)

// effective returns the severity, SeveritySuspend for the zero value.
func (s Severity) effective() Severity {
	if s == "" {
		return SeveritySuspend
	}
	return s
}

// DomainBlock is one entry of the relay's run-time block list. Its JSON
// form is the admin API's.
type DomainBlock struct {
	// Domain is the blocked domain, which covers its subdomains.
	Domain string `json:"domain"`
	// Severity is how hard the domain is blocked; "" means suspend.
	Severity Severity `json:"severity"`
	// Reason is the public reason, published in NodeInfo (see
	// Config.HideBlocks) and exported as Mastodon's #public_comment.
	Reason string `json:"reason"`
	// Note is the operator's private note, never published or exported.
	Note string `json:"note,omitempty"`
	// RejectMedia, RejectReports and Obfuscate are Mastodon's columns of
	// the same names: the relay keeps them for export and ignores them.
	RejectMedia   bool `json:"reject_media,omitempty"`
	RejectReports bool `json:"reject_reports,omitempty"`
	Obfuscate     bool `json:"obfuscate,omitempty"`
}

// Check returns the entry normalised (domain lower case without "*."
// prefix, trailing dot or port; empty severity made suspend), or an error
// if the domain is not an ASCII host name or the severity is unknown.
func (b DomainBlock) Check() (DomainBlock, error) {
	d, err := checkDomain(b.Domain)
	if err != nil {
		return b, err
	}
	for _, c := range d {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return b, fmt.Errorf("relay: %q is not a domain name (use the ASCII form of internationalised names)", b.Domain)
		}
	}
	b.Domain = d
	b.Severity = b.Severity.effective()
	switch b.Severity {
	case SeveritySuspend, SeveritySilence, SeverityNoop:
	default:
		return b, fmt.Errorf("relay: unknown severity %q (want suspend, silence or noop)", b.Severity)
	}
	return b, nil
}

// mastodonHeader is the header line of the block lists Mastodon's admin
// interface exports and imports.
var mastodonHeader = []string{"#domain", "#severity", "#reject_media", "#reject_reports", "#public_comment", "#obfuscate"}

// maxBlockListBytes bounds what ParseBlockList reads.
const maxBlockListBytes = 32 << 20

// ParseBlockList reads a block list, in either of two formats:
//
//   - Mastodon's CSV, recognised by a first line starting with "#domain":
//     the columns #domain, #severity, #reject_media, #reject_reports,
//     #public_comment and #obfuscate, in any order (only #domain is
//     required; unknown columns are ignored). An empty severity means
//     suspend; booleans are true or false (empty is false).
//   - Plain text: one domain a line; blank lines and everything from a
//     "#" on are ignored. Each domain is blocked with severity suspend.
//
// It returns the entries in file order, checked (see DomainBlock.Check),
// or an error naming the first bad line ("line 7: ..."); a file of more
// than 32 MiB is refused.
func ParseBlockList(rd io.Reader) ([]DomainBlock, error) {
	data, err := io.ReadAll(io.LimitReader(rd, maxBlockListBytes+1))
	if err != nil {
		return nil, fmt.Errorf("relay: reading block list: %w", err)
	}
	if len(data) > maxBlockListBytes {
		return nil, fmt.Errorf("relay: block list larger than %d bytes", maxBlockListBytes)
	}
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	if bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("#domain")) {
		return parseMastodonCSV(data)
	}
	return parsePlainBlockList(data)
}

func parsePlainBlockList(data []byte) ([]DomainBlock, error) {
	var out []DomainBlock
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if strings.ContainsAny(line, " \t,") {
			return nil, fmt.Errorf("line %d: %q: one domain a line expected (a Mastodon CSV starts with the line %s)",
				n, line, strings.Join(mastodonHeader, ","))
		}
		b, err := DomainBlock{Domain: line}.Check()
		if err != nil {
			return nil, lineError(n, err)
		}
		out = append(out, b)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("relay: reading block list: %w", err)
	}
	return out, nil
}

func parseMastodonCSV(data []byte) ([]DomainBlock, error) {
	cr := csv.NewReader(bytes.NewReader(data))
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("line 1: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.ToLower(strings.TrimSpace(h))] = i
	}
	if _, ok := col["#domain"]; !ok {
		return nil, fmt.Errorf("line 1: no #domain column")
	}
	var out []DomainBlock
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("line %d: %w", pe.Line, pe.Err)
			}
			return nil, err
		}
		line, _ := cr.FieldPos(0)
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		field := func(name string) string {
			if i, ok := col[name]; ok && i < len(rec) {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		b := DomainBlock{Domain: field("#domain"), Severity: Severity(field("#severity")), Reason: field("#public_comment")}
		for name, dst := range map[string]*bool{"#reject_media": &b.RejectMedia, "#reject_reports": &b.RejectReports, "#obfuscate": &b.Obfuscate} {
			if v := field(name); v != "" {
				if *dst, err = strconv.ParseBool(v); err != nil {
					return nil, fmt.Errorf("line %d: %s: %q is not true or false", line, name, v)
				}
			}
		}
		if b, err = b.Check(); err != nil {
			return nil, lineError(line, err)
		}
		out = append(out, b)
	}
}

// lineError names the line of a block list an error is about.
func lineError(line int, err error) error {
	return fmt.Errorf("line %d: %s", line, strings.TrimPrefix(err.Error(), "relay: "))
}

// WriteBlockList writes blocks as Mastodon's admin interface exports them:
// the CSV header line, then one line per entry (domain, severity,
// reject_media, reject_reports, public reason, obfuscate), in the order
// given. Private notes are not written. Parsing the output with
// ParseBlockList gives the entries back, notes aside.
func WriteBlockList(w io.Writer, blocks []DomainBlock) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(mastodonHeader); err != nil {
		return err
	}
	for _, b := range blocks {
		if err := cw.Write([]string{
			b.Domain, string(b.Severity.effective()), strconv.FormatBool(b.RejectMedia),
			strconv.FormatBool(b.RejectReports), b.Reason, strconv.FormatBool(b.Obfuscate),
		}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// ImportBlocks reads a block list (see ParseBlockList) and adds its
// entries to the run-time block list in one store change (see
// BlockDomains), replacing the entries of the same domains; entries
// already on the list and not in the file stay. A malformed file changes
// nothing: the error names its first bad line. It returns how many entries
// the file held.
func (r *Relay) ImportBlocks(ctx context.Context, rd io.Reader) (int, error) {
	blocks, err := ParseBlockList(rd)
	if err != nil {
		return 0, err
	}
	return len(blocks), r.BlockDomains(ctx, blocks...)
}

// ExportBlocks writes the run-time block list as Mastodon's CSV (see
// WriteBlockList), sorted by domain. A list imported from a file sorted by
// domain and written the way Mastodon writes it exports byte for byte as
// that file.
func (r *Relay) ExportBlocks(ctx context.Context, w io.Writer) error {
	blocks, err := r.DomainBlocks(ctx)
	if err != nil {
		return err
	}
	return WriteBlockList(w, blocks)
}
