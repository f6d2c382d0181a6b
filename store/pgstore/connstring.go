package pgstore

import (
	"net/url"
	"regexp"
	"strings"
)

// isURL reports whether connString is a postgres:// (or postgresql://)
// URL rather than key=value pairs.
func isURL(connString string) bool {
	return strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://")
}

// WithParam returns connString, a postgres:// URL or key=value pairs, with
// the parameter name set to value (escaped or quoted as the form needs):
// for example search_path, so that a relay keeps its tables in a schema of
// its own. connString should not set name already.
func WithParam(connString, name, value string) string {
	if isURL(connString) {
		sep := "?"
		if strings.Contains(connString, "?") {
			sep = "&"
		}
		return connString + sep + url.QueryEscape(name) + "=" + url.QueryEscape(value)
	}
	quoted := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(value)
	return strings.TrimSpace(connString + " " + name + "='" + quoted + "'")
}

// keyValuePassword matches the password of a key=value connection string,
// quoted or not.
var keyValuePassword = regexp.MustCompile(`(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// RedactConnString returns connString with its password, if any, replaced
// by "xxxxx", for logs and messages. A URL that does not parse is not
// shown at all.
func RedactConnString(connString string) string {
	if !isURL(connString) {
		return keyValuePassword.ReplaceAllString(connString, "${1}xxxxx")
	}
	u, err := url.Parse(connString)
	if err != nil {
		return "(a connection string that does not parse)"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.String()
}
