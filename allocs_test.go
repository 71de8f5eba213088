package atomspherecors

import (
	"net/http"
	"testing"
)

// TestAllocs holds the allocation budget (docs/performance.md) for each request of
// the benchmark mix, with one request and one response writer reused
// across runs (its header map cleared each time), as the benchmarks do:
// nothing outside the path prefixes, 1 allocation elsewhere: the
// response's header values (one backing array per request, never
// shared: https://github.com/rs/cors/issues/198). Counts only; timings belong to
// the benchmarks.
func TestAllocs(t *testing.T) {
	const accounts = 1000
	h := benchHandler(t, accounts)
	id, rules := benchRules(accounts / 2)
	path := "/api/rest/v1/" + id + "/Atom/3456"

	cases := benchCases(accounts / 2)
	// A few more of the decisions ServeHTTP makes.
	cases = append(cases,
		benchCase{"preflight_method_denied", http.MethodOptions, path, http.Header{
			"Origin": {rules[1].Origin}, "Access-Control-Request-Method": {"DELETE"}}},
		benchCase{"preflight_origin_not_canonical", http.MethodOptions, path, http.Header{
			"Origin": {"HTTPS://ADMIN500.EXAMPLE.ORG:8443"}, "Access-Control-Request-Method": {"GET"}}},
		benchCase{"get_origin_not_canonical", http.MethodGet, path, http.Header{
			"Origin": {"https://app500.example.com:443"}}},
		benchCase{"get_origin_malformed", http.MethodGet, path, http.Header{
			"Origin": {"https://app500.example.com/"}}},
		benchCase{"options_without_request_method", http.MethodOptions, path, http.Header{
			"Origin": {rules[0].Origin}}},
		benchCase{"get_unknown_account", http.MethodGet, "/api/rest/v1/account-none/Atom/1", http.Header{
			"Origin": {rules[0].Origin}}},
		benchCase{"get_path_not_clean", http.MethodGet, "/api/rest/v1/" + id + "/x/../Atom", http.Header{
			"Origin": {rules[0].Origin}}},
	)

	// The budget is 0 outside the prefixes and 1 elsewhere. A
	// request no browser sends costs more: an Origin that is not in its
	// serialised form is parsed (its scheme and host lower-cased, then
	// serialised again), a path that is not clean is cleaned.
	budget := map[string]float64{"outside": 0, "preflight_origin_not_canonical": 5, "get_origin_not_canonical": 2, "get_path_not_clean": 3,
		"get_allowed_escaped_path": 8}
	allowed := map[string]bool{"preflight_allowed": true, "get_allowed": true, "preflight_origin_not_canonical": true,
		"get_allowed_escaped_path": true,
		"get_origin_not_canonical": true, "get_path_not_clean": true}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := c.request()
			w := newTestWriter()
			got := testing.AllocsPerRun(200, func() {
				w.reset()
				_ = h.ServeHTTP(w, r, next200)
			})
			want, ok := budget[c.name]
			if !ok {
				want = 1
			}
			if got > want {
				t.Errorf("%s %s (%v): %.1f allocations per request, want at most %.0f", c.method, c.path, c.header, got, want)
			}
			// The case must be the request it claims to be.
			if c.name == "preflight_allowed" && w.status != h.ix.Status() {
				t.Errorf("preflight_allowed: status %d, want %d", w.status, h.ix.Status())
			}
			if sent := w.hdr.Get(hdrAllowOrigin) != ""; sent != allowed[c.name] {
				t.Errorf("%s: Access-Control-Allow-Origin sent = %v, want %v (%v)", c.name, sent, allowed[c.name], w.hdr)
			}
		})
	}
}
