package websocket_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

var update = flag.Bool("update", false, "rewrite the golden files of TestAdaptGolden")

// TestAdaptGolden adapts each Caddyfile in testdata/adapt and compares the
// JSON with the golden file beside it: every option's JSON name and value,
// and where the directive sits beside Caddy's own (it must run before
// anything that responds). go test -run TestAdaptGolden -update rewrites
// them; review the diff.
func TestAdaptGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/adapt/*.caddyfile")
	if len(files) == 0 {
		t.Fatal("no golden Caddyfiles")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			in, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out, warn, err := caddyconfig.GetAdapter("caddyfile").Adapt(in, map[string]any{"filename": f})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range warn {
				t.Errorf("warning: %s", w.String())
			}
			var pretty bytes.Buffer
			json.Indent(&pretty, out, "", "\t")
			pretty.WriteByte('\n')
			golden := strings.TrimSuffix(f, ".caddyfile") + ".json"
			if *update {
				os.WriteFile(golden, pretty.Bytes(), 0o644)
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Fatalf("adapted to\n%s\nwant (%s)\n%s", pretty.Bytes(), golden, want)
			}
		})
	}
}
