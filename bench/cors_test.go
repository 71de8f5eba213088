package bench

// The module and github.com/rs/cors side by side, on the benchmarks' request
// mix against 1 000 accounts of 3 rules. rs/cors is configured as one
// policy with the target account's three origins, credentials, the same
// methods, request headers and max-age: what a single-policy library
// would need to serve that one account. Run
//
//	go test -run '^$' -bench . -benchmem -count 6 . | tee cors.txt
//	benchstat -col /impl cors.txt
//
// and read the module/rscors ratio of each case.

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"atomspherecors"
	"atomspherecors/bench/accounts"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/logging" // the discard log writer
	"github.com/rs/cors"
)

// numAccounts is the number of accounts the module is configured with;
// the requests aim at the one in the middle.
const numAccounts = 1000

type benchCase struct {
	name   string
	method string
	path   string
	header http.Header
	// allowed: the response must carry Access-Control-Allow-Origin
	allowed bool
}

// cases is the request mix of docs/performance.md, aimed at account target.
func cases(target int) []benchCase {
	origins := accounts.Origins(target)
	path := "/api/rest/v1/" + accounts.ID(target) + "/Atom/3456"
	const evil = "https://evil.example.com"
	return []benchCase{
		{"preflight_allowed", http.MethodOptions, path, http.Header{
			"Origin":                         {origins[0]},
			"Access-Control-Request-Method":  {"POST"},
			"Access-Control-Request-Headers": {"authorization,content-type"},
		}, true},
		{"preflight_denied", http.MethodOptions, path, http.Header{
			"Origin":                         {evil},
			"Access-Control-Request-Method":  {"POST"},
			"Access-Control-Request-Headers": {"authorization,content-type"},
		}, false},
		{"get_allowed", http.MethodGet, path, http.Header{"Origin": {origins[0]}}, true},
		{"get_denied", http.MethodGet, path, http.Header{"Origin": {evil}}, false},
		{"get_no_origin", http.MethodGet, path, http.Header{}, false},
		{"outside", http.MethodGet, "/static/app.js", http.Header{"Origin": {origins[0]}}, false},
	}
}

func (c benchCase) request() *http.Request {
	r := httptest.NewRequest(c.method, c.path, nil)
	r.Header = c.header.Clone()
	return r
}

// writer is the response recorder: one per benchmark, its header map
// cleared before each request (httptest.ResponseRecorder would copy the
// map on WriteHeader and count that against both).
type writer struct {
	hdr    http.Header
	status int
}

func (w *writer) Header() http.Header         { return w.hdr }
func (w *writer) WriteHeader(s int)           { w.status = s }
func (w *writer) Write(b []byte) (int, error) { return len(b), nil }
func (w *writer) reset()                      { clear(w.hdr); w.status = 0 }

// respond stands for the next handler: a 200 with no body.
func respond(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }

var caddyNext = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	respond(w, r)
	return nil
})

var (
	moduleOnce sync.Once
	module     *atomspherecors.Handler
	moduleErr  error
)

// loadModule loads the handler with n accounts through Caddy's module
// loader, in the context of a running (empty) config whose default log
// is at info level, as in production: the handler's debug entries are
// checked and skipped.
func loadModule(tb testing.TB) *atomspherecors.Handler {
	tb.Helper()
	moduleOnce.Do(func() {
		cfg := `{"admin":{"disabled":true},"logging":{"logs":{"default":{"level":"INFO","writer":{"output":"discard"}}}}}`
		if moduleErr = caddy.Load([]byte(cfg), true); moduleErr != nil {
			return
		}
		ctx, _ := caddy.NewContext(caddy.ActiveContext())
		var mod any
		mod, moduleErr = ctx.LoadModuleByID("http.handlers.atomsphere_cors", accounts.HandlerJSON(numAccounts))
		if moduleErr == nil {
			module = mod.(*atomspherecors.Handler)
		}
	})
	if moduleErr != nil {
		tb.Fatal(moduleErr)
	}
	return module
}

// peer is rs/cors as one policy for the target account.
func peer(target int) http.Handler {
	c := cors.New(cors.Options{
		AllowedOrigins:   accounts.Origins(target),
		AllowCredentials: true,
		AllowedMethods:   []string{"GET", "POST", "DELETE"},
		AllowedHeaders: []string{"cache-control", "content-type", "expires", "last-modified",
			"accept", "content-language", "authorization", "pragma"},
		MaxAge: 3600,
	})
	return c.Handler(http.HandlerFunc(respond))
}

// serveFunc is one implementation's request function.
type serveFunc func(w http.ResponseWriter, r *http.Request)

func impls(tb testing.TB) []struct {
	name  string
	serve serveFunc
} {
	m := loadModule(tb)
	p := peer(numAccounts / 2)
	return []struct {
		name  string
		serve serveFunc
	}{
		{"module", func(w http.ResponseWriter, r *http.Request) { _ = m.ServeHTTP(w, r, caddyNext) }},
		{"rscors", p.ServeHTTP},
	}
}

// BenchmarkCORS runs each case of the mix with the module and with
// rs/cors, one after the other in the same run.
func BenchmarkCORS(b *testing.B) {
	for _, c := range cases(numAccounts / 2) {
		for _, impl := range impls(b) {
			b.Run("case="+c.name+"/impl="+impl.name, func(b *testing.B) {
				r := c.request()
				w := &writer{hdr: http.Header{}}
				b.ReportAllocs()
				for b.Loop() {
					w.reset()
					impl.serve(w, r)
				}
			})
		}
	}
}

// TestSamePolicy checks that the peer is configured like the module's
// target account: both allow (send Access-Control-Allow-Origin) exactly
// the same requests of the mix.
func TestSamePolicy(t *testing.T) {
	for _, c := range cases(numAccounts / 2) {
		for _, impl := range impls(t) {
			w := &writer{hdr: http.Header{}}
			impl.serve(w, c.request())
			got := w.hdr.Get("Access-Control-Allow-Origin") != ""
			want := c.allowed
			if impl.name == "rscors" && c.name == "outside" {
				want = true // rs/cors has no path scoping
			}
			if got != want {
				t.Errorf("%s, %s: Access-Control-Allow-Origin sent = %v, want %v (%v)", c.name, impl.name, got, want, w.hdr)
			}
		}
	}
}
