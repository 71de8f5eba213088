package atomspherecors

import (
	"net/http"
	"slices"
	"testing"
)

// TestPreflightVaryExtended: allowed and denied preflights extend a Vary
// set before the module alike (docs/behaviour.md §2): the preflight's
// value is added unless Vary already names each of its tokens, in any
// case, or "*".
func TestPreflightVaryExtended(t *testing.T) {
	h := mustLoadHandler(t, `{"accounts":{"account-1":[{"origin":"https://app.example.com","methods":["GET"]}]}}`, nil)
	for _, tc := range []struct {
		before, want []string
	}{
		{nil, []string{varyPreflight}},
		{[]string{"Accept"}, []string{"Accept", varyPreflight}},
		{[]string{"*"}, []string{"*"}},
		{[]string{"Accept, *"}, []string{"Accept, *"}},
		{[]string{"origin", "ACCESS-CONTROL-REQUEST-METHOD, Access-Control-Request-Headers"},
			[]string{"origin", "ACCESS-CONTROL-REQUEST-METHOD, Access-Control-Request-Headers"}},
		{[]string{"Origin"}, []string{"Origin", varyPreflight}},
	} {
		for _, origin := range []string{"https://app.example.com", "https://evil.example.com"} {
			r := (benchCase{"", http.MethodOptions, "/api/rest/v1/account-1/items", http.Header{
				"Origin": {origin}, "Access-Control-Request-Method": {"GET"}}}).request()
			w := newTestWriter()
			if tc.before != nil {
				w.hdr["Vary"] = slices.Clone(tc.before)
			}
			_ = h.ServeHTTP(w, r, next200)
			if got := w.hdr["Vary"]; !slices.Equal(got, tc.want) {
				t.Errorf("preflight from %s, Vary %q before: Vary %q, want %q", origin, tc.before, got, tc.want)
			}
		}
	}
}
