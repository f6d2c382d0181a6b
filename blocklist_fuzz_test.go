package relay_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/fedirelay/relay"
)

// FuzzParseBlockList checks that any block list ParseBlockList accepts is
// written by WriteBlockList in a form it reads back to the same entries.
func FuzzParseBlockList(f *testing.F) {
	f.Add("#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate\nbad.example,suspend,false,false,\"spam, \"\"really\"\"\",true\n")
	f.Add("#domain\nonly.example\n")
	f.Add("# comment\nA.Example.\n*.b.example # note\n")
	f.Add("#domain,#severity\nx.example,silence\ny.example,noop\n")
	f.Fuzz(func(t *testing.T, in string) {
		blocks, err := relay.ParseBlockList(strings.NewReader(in))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "line ") && !strings.HasPrefix(err.Error(), "relay: ") {
				t.Fatalf("error without a line: %v", err)
			}
			return
		}
		var out bytes.Buffer
		if err := relay.WriteBlockList(&out, blocks); err != nil {
			t.Fatal(err)
		}
		again, err := relay.ParseBlockList(&out)
		if err != nil {
			t.Fatalf("written list does not parse: %v\n%s", err, out.String())
		}
		if len(again) != len(blocks) {
			t.Fatalf("%d entries, read back %d", len(blocks), len(again))
		}
		for i := range blocks {
			if blocks[i] != again[i] {
				t.Fatalf("entry %d: %+v, read back %+v", i, blocks[i], again[i])
			}
		}
	})
}
