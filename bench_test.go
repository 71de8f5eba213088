package atomspherecors

// Benchmarks of docs/performance.md. Run them with
//
//	go test -run '^$' -bench 'ServeHTTP|Provision' -benchmem -count 6 . | tee root.txt
//	benchstat -col /accounts -filter '.name:ServeHTTP' root.txt  # flat in the number of accounts
//	benchstat -col /step -filter '.name:Provision' root.txt      # load = decode + build
//
// The rs/cors comparison is in the nested module bench/, so that users'
// builds never depend on rs/cors; scripts/perf-e2e measures a real Caddy.

import (
	"context"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"atomspherecors/internal/policy"
)

// benchRules returns the three rules of account i, as docs/performance.md describes
// them: an app origin with GET, POST and DELETE, an admin origin on a
// port with GET, a development origin over http with GET and POST.
func benchRules(i int) (id string, rules []policy.Rule) {
	n := strconv.Itoa(i)
	return "account-" + n, []policy.Rule{
		{Origin: "https://app" + n + ".example.com", Methods: benchMethods[0]},
		{Origin: "https://admin" + n + ".example.org:8443", Methods: benchMethods[1]},
		{Origin: "http://dev" + n + ".example.net:8080", Methods: benchMethods[2]},
	}
}

// benchMethods are shared by every account's rules (Provision does not
// change a rule), which keeps 10^6 accounts built in Go small.
var benchMethods = [3][]string{{"GET", "POST", "DELETE"}, {"GET"}, {"GET", "POST"}}

// benchConfigJSON is the handler's JSON with n accounts of benchRules,
// without the "handler" key (a route's loader consumes that key before
// it calls the module loader).
func benchConfigJSON(n int) []byte {
	buf := make([]byte, 0, 200*n+64)
	// Account IDs in sorted order, as Caddy hands the config over: it
	// re-encodes the config with json.Marshal, which sorts map keys.
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(strconv.Itoa(a), strconv.Itoa(b)) })
	buf = append(buf, `{"accounts":{`...)
	for k, i := range order {
		if k > 0 {
			buf = append(buf, ',')
		}
		id, rules := benchRules(i)
		buf = append(buf, '"')
		buf = append(buf, id...)
		buf = append(buf, `":[`...)
		for j, r := range rules {
			if j > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, `{"origin":"`...)
			buf = append(buf, r.Origin...)
			buf = append(buf, `","methods":[`...)
			for k, m := range r.Methods {
				if k > 0 {
					buf = append(buf, ',')
				}
				buf = strconv.AppendQuote(buf, m)
			}
			buf = append(buf, "]}"...)
		}
		buf = append(buf, ']')
	}
	return append(buf, "}}"...)
}

// benchCase is one request of the benchmarks' mix (docs/performance.md).
type benchCase struct {
	name   string
	method string
	path   string
	header http.Header
}

// benchCases is the request mix, aimed at account target.
func benchCases(target int) []benchCase {
	id, rules := benchRules(target)
	allowed := rules[0].Origin
	path := "/api/rest/v1/" + id + "/Atom/3456"
	const evil = "https://evil.example.com"
	return []benchCase{
		{"preflight_allowed", http.MethodOptions, path, http.Header{
			"Origin":                         {allowed},
			"Access-Control-Request-Method":  {"POST"},
			"Access-Control-Request-Headers": {"authorization,content-type"},
		}},
		{"preflight_denied", http.MethodOptions, path, http.Header{
			"Origin":                         {evil},
			"Access-Control-Request-Method":  {"POST"},
			"Access-Control-Request-Headers": {"authorization,content-type"},
		}},
		{"get_allowed", http.MethodGet, path, http.Header{"Origin": {allowed}}},
		{"get_denied", http.MethodGet, path, http.Header{"Origin": {evil}}},
		{"get_no_origin", http.MethodGet, path, http.Header{}},
		// The path guard reads a path with '%', ';' or '\' as backends would.
		{"get_allowed_escaped_path", http.MethodGet, path + "/a%2Fb", http.Header{"Origin": {allowed}}},
		{"outside", http.MethodGet, "/static/app.js", http.Header{"Origin": {allowed}}},
	}
}

func (c benchCase) request() *http.Request {
	r := httptest.NewRequest(c.method, c.path, nil)
	r.Header = c.header.Clone()
	return r
}

// benchHandlers holds one provisioned handler per number of accounts,
// built lazily and once per process: the 10^6 index takes seconds.
var benchHandlers struct {
	sync.Mutex
	m map[int]*Handler
}

// benchHandler returns a handler with n accounts. Up to 10^5 accounts it
// is loaded from JSON by Caddy's module loader; above, Provision runs on
// rules built in Go, which gives the same index without a ~200 MB JSON
// document and its decoding.
func benchHandler(tb testing.TB, n int) *Handler {
	tb.Helper()
	benchHandlers.Lock()
	defer benchHandlers.Unlock()
	if h := benchHandlers.m[n]; h != nil {
		return h
	}
	var h *Handler
	if n <= 100_000 {
		h = mustLoadHandler(tb, string(benchConfigJSON(n)), nil)
	} else {
		h = &Handler{Accounts: make(map[string][]policy.Rule, n)}
		for i := 0; i < n; i++ {
			id, rules := benchRules(i)
			h.Accounts[id] = rules
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := h.Provision(ctx)
		cancel()
		if err != nil {
			tb.Fatal(err)
		}
		h.setLogger(zap.NewNop())
		runtime.GC()
	}
	if benchHandlers.m == nil {
		benchHandlers.m = make(map[int]*Handler)
	}
	benchHandlers.m[n] = h
	return h
}

// smokeRun reports whether benchmarks run once each (-benchtime 1x), to
// check that they work rather than to measure.
func smokeRun() bool {
	f := flag.Lookup("test.benchtime")
	return f != nil && f.Value.String() == "1x"
}

// BenchmarkServeHTTP runs the request mix against N accounts of 3 rules,
// aimed at the account in the middle. The cost must not depend on N
// (compare accounts=1 with accounts=1000000), and allocations stay at 0
// outside the prefixes and at most 2 elsewhere (see allocs_test.go).
func BenchmarkServeHTTP(b *testing.B) {
	// The numbers of accounts of one case run one after the other, so that
	// a change in the machine's load skews their ratio least.
	for k := range benchCases(0) {
		for _, n := range []int{1, 1000, 1_000_000} {
			c := benchCases(n / 2)[k]
			b.Run("case="+c.name+"/accounts="+strconv.Itoa(n), func(b *testing.B) {
				h := benchHandler(b, n)
				r := c.request()
				w := newTestWriter()
				b.ReportAllocs()
				for b.Loop() {
					w.reset()
					_ = h.ServeHTTP(w, r, next200)
				}
			})
		}
	}
}

// BenchmarkProvision loads the handler from the JSON of N accounts of 3
// rules, in three steps reported separately:
//
//   - step=load: Caddy's module loader, ctx.LoadModuleByID, which decodes
//     the JSON and provisions the handler; it reports retained-MB, the
//     heap the provisioned handler keeps (the decoded config is dropped
//     once compiled);
//   - step=decode: the JSON decoding alone (caddy.StrictUnmarshalJSON, as
//     the loader calls it);
//   - step=build: Provision alone, on rules already decoded: checking
//     the config and building the index.
//
// The 10^6 case takes about 20 s and 1.5 GB: it is skipped with -short
// and in a smoke run (-benchtime 1x, as CI runs every benchmark once).
func BenchmarkProvision(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run("accounts="+strconv.Itoa(n), func(b *testing.B) {
			if n > 100_000 && (testing.Short() || smokeRun()) {
				b.Skip("10^6 accounts: skipped with -short and -benchtime 1x")
			}
			raw := benchConfigJSON(n)
			b.Run("step=load", func(b *testing.B) {
				var retained float64
				for b.Loop() {
					var before, after runtime.MemStats
					b.StopTimer()
					runtime.GC()
					runtime.ReadMemStats(&before)
					b.StartTimer()
					ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
					mod, err := ctx.LoadModuleByID("http.handlers.atomsphere_cors", raw)
					if err != nil {
						b.Fatal(err)
					}
					cancel()
					b.StopTimer()
					runtime.GC()
					runtime.ReadMemStats(&after)
					runtime.KeepAlive(mod)
					b.StartTimer()
					retained = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / 1e6
				}
				b.ReportMetric(retained, "retained-MB")
			})
			b.Run("step=decode", func(b *testing.B) {
				for b.Loop() {
					var h Handler
					if err := caddy.StrictUnmarshalJSON(raw, &h); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("step=build", func(b *testing.B) {
				var decoded Handler
				if err := json.Unmarshal(raw, &decoded); err != nil {
					b.Fatal(err)
				}
				ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
				defer cancel()
				for b.Loop() {
					h := decoded // Provision drops h.Accounts, not the map
					if err := h.Provision(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
