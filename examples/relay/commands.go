package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fedirelay/relay"
	"github.com/fedirelay/relay/store"
)

// adminCommand is a subcommand that acts on the running relay through the
// admin socket in its data directory.
type adminCommand struct {
	args    string // synopsis after the name
	summary string
	run     func(c *commandEnv) error
}

// adminCommands are the subcommands that talk to a running relay, by name.
var adminCommands = map[string]adminCommand{
	"subscribers": {"[-state pending|accepted|rejected|dormant] [-host HOST] [-software NAME] [-json]", "list subscribers", cmdSubscribers},
	"approve": {"[-topic TOPIC] ACTOR...", "accept pending (or refused) subscription requests;\n" +
		"with -topic, follows of that topic actor (see relay topic-followers)", cmdSubscriberAction("approve", "approved")},
	"refuse": {"[-reason TEXT | -topic TOPIC] ACTOR...", "refuse subscriptions: each gets a Reject with the reason;\n" +
		"with -topic, follows of that topic actor (a Reject without reason)", cmdSubscriberAction("refuse", "refused")},
	"remove": {"ACTOR...", "end subscriptions (a Reject is sent) and delete them", cmdSubscriberAction("remove", "removed")},
	"mode":   {"ACTOR both|receive-only|send-only", "set which way a subscriber's activities flow", cmdMode},
	"note":   {"ACTOR TEXT", "set the private note on a subscriber", cmdNote},
	"filter": {"ACTOR [FILE|-|none]", "print, set (a JSON filter from FILE or - for standard input,\n" +
		"see docs/operating.md) or remove (none) a subscriber's content filter", cmdFilter},
	"block":           {"[-reason TEXT] [-note TEXT] [-severity suspend|silence|noop] DOMAIN...", "block domains (ends their subscriptions)", cmdBlock},
	"unblock":         {"DOMAIN...", "remove domains from the block list", cmdDomains("DELETE", "blocks", "unblocked")},
	"blocks":          {"[-json]", "list the block list", cmdBlocks},
	"blocks-import":   {"FILE|-", "import a Mastodon CSV or plain-text block list", cmdBlocksImport},
	"blocks-export":   {"", "write the block list as Mastodon CSV", cmdBlocksExport},
	"allow":           {"DOMAIN...", "add domains to the allowlist (see -allowlist)", cmdDomains("PUT", "allowlist", "allowed")},
	"disallow":        {"DOMAIN...", "remove domains from the allowlist", cmdDomains("DELETE", "allowlist", "disallowed")},
	"allowed":         {"[-json]", "list the allowlist", cmdAllowed},
	"topic-followers": {"[-state pending|accepted|rejected] [-topic TOPIC] [-json]", "list the follows of topic actors (tag/…, language/…, instance/…)", cmdTopicFollowers},
	"status":          {"[-json]", "subscribers by state, backlog, deliveries in flight, open breakers", cmdStatus},
}

// adminCommandOrder is the order the usage text lists adminCommands in.
var adminCommandOrder = []string{"subscribers", "approve", "refuse", "remove", "mode", "note", "filter", "block", "unblock",
	"blocks", "blocks-import", "blocks-export", "allow", "disallow", "allowed", "topic-followers", "status"}

// adminCommandList returns adminCommands as entries of the command table.
func adminCommandList() []command {
	out := make([]command, 0, len(adminCommandOrder))
	for _, name := range adminCommandOrder {
		c := adminCommands[name]
		out = append(out, command{name, strings.TrimSpace("[-data DIR] " + c.args), c.summary,
			func(args []string, stdin io.Reader, stdout io.Writer) error {
				return runAdminCommand(name, args, stdin, stdout)
			}})
	}
	return out
}

// commandEnv is what a subcommand runs with: its parsed flags, arguments,
// streams and a client of the admin socket.
type commandEnv struct {
	fs     *flag.FlagSet
	dir    string
	stdin  io.Reader
	stdout io.Writer
	client *http.Client
	// flags registered by the command before parsing
	json                   *bool
	state, host, software  *string
	reason, note, severity *string
	topic                  *string
}

// runAdminCommand runs the admin subcommand name with its arguments.
func runAdminCommand(name string, args []string, stdin io.Reader, stdout io.Writer) error {
	cmd, ok := adminCommands[name]
	if !ok {
		return usageErrorf("unknown command %q (see relay help)", name)
	}
	fs := flag.NewFlagSet("relay "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: relay %s [-data DIR] %s\n  %s\n\nFlags:\n", name, cmd.args, cmd.summary)
		fs.PrintDefaults()
	}
	c := &commandEnv{fs: fs, stdin: stdin, stdout: stdout}
	fs.StringVar(&c.dir, "data", "relay-data", "data directory of the running relay")
	switch name {
	case "subscribers":
		c.state = fs.String("state", "", "only subscribers in this state: pending, accepted, rejected or dormant")
		c.host = fs.String("host", "", "only subscribers on this host")
		c.software = fs.String("software", "", "only subscribers running this software (NodeInfo name)")
	case "approve":
		c.topic = fs.String("topic", "", "approve follows of this topic actor (e.g. tag/cats) instead of subscriptions")
	case "refuse":
		c.reason = fs.String("reason", "", "public reason, sent with the Reject")
		c.topic = fs.String("topic", "", "refuse follows of this topic actor (e.g. tag/cats) instead of subscriptions")
	case "topic-followers":
		c.state = fs.String("state", "", "only follows in this state: pending, accepted or rejected")
		c.topic = fs.String("topic", "", "only follows of this topic (e.g. tag/cats)")
	case "block":
		c.reason = fs.String("reason", "", "public reason, published in NodeInfo and exported")
		c.note = fs.String("note", "", "private note")
		c.severity = fs.String("severity", "suspend", "suspend (block), silence (receive only) or noop (listed only)")
	}
	if strings.Contains(cmd.args, "-json") {
		c.json = fs.Bool("json", false, "print JSON instead of a table")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageErrorf("%v (see relay %s -h)", err, name)
	}
	sock := filepath.Join(c.dir, adminSocketName)
	c.client = &http.Client{
		Timeout: 5 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	defer c.client.CloseIdleConnections()
	return cmd.run(c)
}

// errNoRelay is returned when nothing answers on the admin socket.
type errNoRelay struct{ dir string }

func (e errNoRelay) Error() string { return "no relay is running on " + e.dir }

// call sends a request to the admin API and decodes the JSON answer into
// out (if not nil). An error answer becomes an error with its message.
func (c *commandEnv) call(method, path string, body io.Reader, out any) error {
	raw, err := c.callRaw(method, path, body)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("unexpected answer from the relay: %w", err)
	}
	return nil
}

func (c *commandEnv) callRaw(method, path string, body io.Reader) ([]byte, error) {
	req, err := http.NewRequest(method, "http://relay-admin"+path, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		if isDialError(err) { // no socket, or nobody listening on it

			return nil, errNoRelay{c.dir}
		}
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("the relay answered %s", resp.Status)
	}
	return raw, nil
}

// isDialError reports an error dialling the admin socket.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// needArgs checks the number of positional arguments.
func (c *commandEnv) needArgs(min, max int, what string) error {
	n := c.fs.NArg()
	if n < min || (max >= 0 && n > max) {
		return usageErrorf("%s: expected %s", c.fs.Name(), what)
	}
	return nil
}

func (c *commandEnv) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdSubscribers(c *commandEnv) error {
	if err := c.needArgs(0, 0, "no arguments"); err != nil {
		return err
	}
	q := url.Values{"limit": {"10000"}}
	for k, v := range map[string]string{"state": *c.state, "host": *c.host, "software": *c.software} {
		if v != "" {
			q.Set(k, v)
		}
	}
	all := []relay.AdminSubscriber{}
	for {
		var page relay.AdminSubscriberPage
		if err := c.call("GET", "/api/v1/subscribers?"+q.Encode(), nil, &page); err != nil {
			return err
		}
		all = append(all, page.Subscribers...)
		if page.Next == "" {
			break
		}
		q.Set("after", page.Next)
	}
	if *c.json {
		return c.printJSON(all)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ACTOR\tSTATE\tPROTOCOL\tMODE\tSOFTWARE\tDELIVERED\tFAILED\tLAST ERROR")
	for _, s := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", s.ActorID, s.State, s.Protocol, s.Mode,
			dash(s.Software), s.Delivered, s.Failed, dash(oneLine(s.LastError, 60)))
	}
	return tw.Flush()
}

// cmdSubscriberAction posts action for every actor argument.
func cmdSubscriberAction(action, done string) func(c *commandEnv) error {
	return func(c *commandEnv) error {
		if err := c.needArgs(1, -1, "at least one ACTOR"); err != nil {
			return err
		}
		if c.topic != nil && *c.topic != "" {
			return topicFollowerAction(c, action, done)
		}
		for _, actor := range c.fs.Args() {
			body := map[string]string{"actor": actor}
			if c.reason != nil && *c.reason != "" {
				body["reason"] = *c.reason
			}
			if err := c.call("POST", "/api/v1/subscriber/"+action, jsonBody(body), nil); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%s %s\n", done, actor)
		}
		return nil
	}
}

// topicFollowerAction approves or refuses the follows of the -topic actor
// by every actor argument.
func topicFollowerAction(c *commandEnv, action, done string) error {
	if c.reason != nil && *c.reason != "" {
		return usageErrorf("%s: -reason is for subscriptions; a topic follow is refused without one", c.fs.Name())
	}
	for _, actor := range c.fs.Args() {
		var f relay.TopicFollower
		body := jsonBody(map[string]string{"topic": *c.topic, "actor": actor})
		if err := c.call("POST", "/api/v1/topic-follower/"+action, body, &f); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%s %s (follow of %s)\n", done, actor, f.Topic)
	}
	return nil
}

func cmdTopicFollowers(c *commandEnv) error {
	if err := c.needArgs(0, 0, "no arguments"); err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"state": *c.state, "topic": *c.topic} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var follows []relay.TopicFollower
	if err := c.call("GET", "/api/v1/topic-followers?"+q.Encode(), nil, &follows); err != nil {
		return err
	}
	if *c.json {
		return c.printJSON(follows)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tACTOR\tKIND\tSTATE\tSINCE")
	for _, f := range follows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", f.Topic, f.Actor, f.Kind, f.State, f.CreatedAt.Format(time.DateOnly))
	}
	return tw.Flush()
}

func cmdMode(c *commandEnv) error {
	if err := c.needArgs(2, 2, "ACTOR and a mode (both, receive-only or send-only)"); err != nil {
		return err
	}
	actor, mode := c.fs.Arg(0), c.fs.Arg(1)
	if _, err := store.ParseMode(mode); err != nil {
		return usageErrorf("mode: unknown mode %q (want both, receive-only or send-only)", mode)
	}
	if err := c.call("POST", "/api/v1/subscriber/mode", jsonBody(map[string]string{"actor": actor, "mode": mode}), nil); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s is now %s\n", actor, mode)
	return nil
}

func cmdNote(c *commandEnv) error {
	if err := c.needArgs(2, 2, "ACTOR and the note"); err != nil {
		return err
	}
	if err := c.call("POST", "/api/v1/subscriber/note", jsonBody(map[string]string{"actor": c.fs.Arg(0), "note": c.fs.Arg(1)}), nil); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "note set on %s\n", c.fs.Arg(0))
	return nil
}

func cmdFilter(c *commandEnv) error {
	if err := c.needArgs(1, 2, "ACTOR and optionally FILE, - (standard input) or none"); err != nil {
		return err
	}
	path := "/api/v1/subscriber/filter?" + url.Values{"actor": {c.fs.Arg(0)}}.Encode()
	method, body := "GET", io.Reader(nil)
	switch src := c.fs.Arg(1); src {
	case "":
	case "none":
		method = "DELETE"
	default:
		var data []byte
		var err error
		if src == "-" {
			data, err = io.ReadAll(c.stdin)
		} else {
			data, err = os.ReadFile(src)
		}
		if err != nil {
			return fmt.Errorf("filter: %w", err)
		}
		method, body = "PUT", bytes.NewReader(data)
	}
	var spec relay.FilterSpec
	if err := c.call(method, path, body, &spec); err != nil {
		return err
	}
	if spec.IsZero() {
		_, err := fmt.Fprintln(c.stdout, "none")
		return err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(c.stdout, string(b))
	return err
}

func cmdBlock(c *commandEnv) error {
	if err := c.needArgs(1, -1, "at least one DOMAIN"); err != nil {
		return err
	}
	for _, d := range c.fs.Args() {
		b := relay.DomainBlock{Severity: relay.Severity(*c.severity), Reason: *c.reason, Note: *c.note}
		var got relay.DomainBlock
		if err := c.call("PUT", "/api/v1/blocks/"+url.PathEscape(d), jsonBody(b), &got); err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "blocked %s (%s)\n", got.Domain, got.Severity)
	}
	return nil
}

// cmdDomains sends method to /api/v1/{collection}/{domain} for every
// domain argument.
func cmdDomains(method, collection, done string) func(c *commandEnv) error {
	return func(c *commandEnv) error {
		if err := c.needArgs(1, -1, "at least one DOMAIN"); err != nil {
			return err
		}
		for _, d := range c.fs.Args() {
			var got struct{ Domain string }
			if err := c.call(method, "/api/v1/"+collection+"/"+url.PathEscape(d), nil, &got); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%s %s\n", done, got.Domain)
		}
		return nil
	}
}

func cmdBlocks(c *commandEnv) error {
	if err := c.needArgs(0, 0, "no arguments"); err != nil {
		return err
	}
	var blocks []relay.DomainBlock
	if err := c.call("GET", "/api/v1/blocks", nil, &blocks); err != nil {
		return err
	}
	if *c.json {
		return c.printJSON(blocks)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tSEVERITY\tREASON\tNOTE")
	for _, b := range blocks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.Domain, b.Severity, dash(oneLine(b.Reason, 60)), dash(oneLine(b.Note, 40)))
	}
	return tw.Flush()
}

func cmdBlocksImport(c *commandEnv) error {
	if err := c.needArgs(1, 1, "FILE, or - for standard input"); err != nil {
		return err
	}
	var data []byte
	var err error
	if name := c.fs.Arg(0); name == "-" {
		data, err = io.ReadAll(c.stdin)
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return err
	}
	var got struct{ Imported int }
	if err := c.call("POST", "/api/v1/blocks/import", bytes.NewReader(data), &got); err != nil {
		return fmt.Errorf("blocks-import %s: %w", c.fs.Arg(0), err)
	}
	fmt.Fprintf(c.stdout, "imported %d entries\n", got.Imported)
	return nil
}

func cmdBlocksExport(c *commandEnv) error {
	if err := c.needArgs(0, 0, "no arguments"); err != nil {
		return err
	}
	raw, err := c.callRaw("GET", "/api/v1/blocks/export", nil)
	if err != nil {
		return err
	}
	_, err = c.stdout.Write(raw)
	return err
}

func cmdAllowed(c *commandEnv) error {
	if err := c.needArgs(0, 0, "no arguments"); err != nil {
		return err
	}
	var list struct {
		AllowlistOnly bool     `json:"allowlist_only"`
		Domains       []string `json:"domains"`
	}
	if err := c.call("GET", "/api/v1/allowlist", nil, &list); err != nil {
		return err
	}
	if *c.json {
		return c.printJSON(list)
	}
	if !list.AllowlistOnly {
		fmt.Fprintln(c.stdout, "# allowlist mode is off (start the relay with -allowlist to enforce this list)")
	}
	for _, d := range list.Domains {
		fmt.Fprintln(c.stdout, d)
	}
	return nil
}

func cmdStatus(c *commandEnv) error {
	if err := c.needArgs(0, 0, "no arguments"); err != nil {
		return err
	}
	var o relay.Overview
	if err := c.call("GET", "/api/v1/status", nil, &o); err != nil {
		return err
	}
	if *c.json {
		return c.printJSON(o)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "subscribers\taccepted %d, pending %d, dormant %d, rejected %d\n", o.Subscribers[store.StateAccepted],
		o.Subscribers[store.StatePending], o.Subscribers[store.StateDormant], o.Subscribers[store.StateRejected])
	fmt.Fprintf(tw, "deliveries\t%d queued, %d in flight\n", o.Backlog, o.InFlight)
	fmt.Fprintf(tw, "blocked domains\t%d\n", o.BlockedDomains)
	fmt.Fprintf(tw, "allowlist\t%d domains, %s\n", o.AllowedDomains, onOff(o.AllowlistOnly))
	fmt.Fprintf(tw, "approval\t%s\n", map[bool]string{true: "required", false: "not required"}[o.ApprovalRequired])
	fmt.Fprintf(tw, "open breakers\t%d\n", len(o.OpenBreakers))
	for _, b := range o.OpenBreakers {
		fmt.Fprintf(tw, "  %s\t%s %s\n", b.Host, b.Circuit, b.OpenUntil)
	}
	return tw.Flush()
}

func jsonBody(v any) io.Reader {
	b, _ := json.Marshal(v)
	return bytes.NewReader(b)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func onOff(b bool) string {
	if b {
		return "enforced"
	}
	return "not enforced"
}

// oneLine shortens s to one line of at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
