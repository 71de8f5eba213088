package atomspherecors

import (
	"os"
	"strings"
	"testing"

	"atomspherecors/internal/policy"
)

// TestReasonsDocumented: every reason of a denial and every message of
// the debug log, as the code names them, is in docs/behaviour.md §8 and
// in the metrics table of docs/operating.md, so the docs cannot fall
// behind the enum.
func TestReasonsDocumented(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	behaviour, operating := read("docs/behaviour.md"), read("docs/operating.md")
	logging := behaviour[strings.Index(behaviour, "## 8."):strings.Index(behaviour, "## 9.")]
	for r := policy.Allowed + 1; r < policy.NumReasons; r++ {
		label := "`" + r.String() + "`"
		if !strings.Contains(logging, label) {
			t.Errorf("docs/behaviour.md §8 does not list the reason %s", label)
		}
		if !strings.Contains(operating, label) {
			t.Errorf("docs/operating.md does not list the reason %s", label)
		}
	}
	for _, d := range []policy.Decision{
		{Kind: policy.Preflight}, {Kind: policy.Normal}, {Kind: policy.Normal, Reason: policy.AmbiguousPath}, {Kind: policy.Preflight, Reason: policy.DeferredHeaders},
	} {
		if msg := "`" + debugMessage(&d) + "`"; !strings.Contains(logging, msg) {
			t.Errorf("docs/behaviour.md §8 does not list the debug message %s", msg)
		}
	}
}
