package atomspherecors

import (
	"os"
	"strings"
	"testing"
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
	for r := Allowed + 1; r < numReasons; r++ {
		label := "`" + r.String() + "`"
		if !strings.Contains(logging, label) {
			t.Errorf("docs/behaviour.md §8 does not list the reason %s", label)
		}
		if !strings.Contains(operating, label) {
			t.Errorf("docs/operating.md does not list the reason %s", label)
		}
	}
	for _, d := range []Decision{
		{Kind: Preflight}, {Kind: Normal}, {Kind: Normal, Reason: AmbiguousPath}, {Kind: Preflight, Reason: DeferredHeaders},
	} {
		if msg := "`" + debugMessage(d) + "`"; !strings.Contains(logging, msg) {
			t.Errorf("docs/behaviour.md §8 does not list the debug message %s", msg)
		}
	}
}

// TestDecideIsPure: Decide reads the request and writes nothing: not
// the request's headers, not its URL; and deciding twice gives the same
// decision.
func TestDecideIsPure(t *testing.T) {
	h := mustLoadHandler(t, `{"accounts": {"account-1": [{"origin": "https://app.example", "methods": ["GET"]}]}}`, nil)
	for _, target := range []string{
		"/api/rest/v1/account-1/x", "/api/rest/v1/account-1/..%2faccount-2/x", "/static/x", "/api/rest/v1/account-2/x",
	} {
		for _, method := range []string{"GET", "OPTIONS", "DELETE"} {
			r := parseTarget(t, target)
			r.Method = method
			r.Header.Set("Origin", "https://app.example")
			r.Header.Set("Access-Control-Request-Method", "GET")
			before := r.Header.Clone()
			url := *r.URL
			d1 := h.ix.Decide(r, true)
			d2 := h.ix.Decide(r, true)
			if d1 != d2 {
				t.Errorf("%s %s: %+v, then %+v", method, target, d1, d2)
			}
			if *r.URL != url || len(r.Header) != len(before) || r.Header.Get("Origin") != before.Get("Origin") {
				t.Errorf("%s %s: Decide changed the request", method, target)
			}
		}
	}
	r := parseTarget(t, "/api/rest/v1/account-1/x")
	r.Method = "OPTIONS"
	r.Header.Set("Origin", "https://app.example")
	r.Header.Set("Access-Control-Request-Method", "GET")
	if d := h.ix.Decide(r, true); d.Kind != Preflight || !d.Allowed() || d.Account != "account-1" || d.Rule == nil || d.Rule.origin != "https://app.example" {
		t.Errorf("allowed preflight decided %+v", d)
	}
	r.Header.Set("Access-Control-Request-Method", "DELETE")
	if d := h.ix.Decide(r, true); d.Kind != Preflight || d.Allowed() || d.Reason != MethodNotAllowed || d.Reason.String() != "method not allowed" {
		t.Errorf("preflight for a method the rule lacks decided %+v", d)
	}
}
