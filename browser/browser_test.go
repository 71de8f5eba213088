package browser

// Real-browser tests. A headless Chromium, driven through the
// DevTools protocol with chromedp, loads a page from origin A and calls the
// API on origin B with fetch(..., {credentials: 'include'}); the page's
// script reports what it could see. Everything runs on loopback: Caddy in
// this process, a stub API upstream on 127.0.0.1, and Chromium with a fresh
// profile per test.
//
// Three witnesses per call: the page (status, readable headers, or the
// TypeError of a blocked call), Chromium's own CORS verdict from the
// DevTools Network domain (corsErrorStatus of the failed load), and the
// server: a spy handler placed before atomsphere_cors records every request
// that reaches the module, so preflights can be counted, and the stub
// upstream records every request that got through.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "atomspherecors" // the atomsphere_cors handler and directive
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// Origins of the browser tests. localhost and 127.0.0.1 are different
// origins (and sites), so the page and the API are cross-origin even
// before their ports differ.
const (
	pageOrigin  = "http://localhost:9101" // origin A: acct-1 allows it GET and DELETE
	otherOrigin = "http://localhost:9103" // the same page from an origin no account allows
	apiOrigin   = "http://127.0.0.1:9102" // origin B: the API, max_age 1h
	apiNoCache  = "http://127.0.0.1:9104" // the same API with max_age 0

	// browserTestTimeout bounds each test's browser, page and calls.
	browserTestTimeout = 25 * time.Second
)

// browserAPIConfig is the Caddyfile of the browser tests: the test page
// on origin A (and on the disallowed origin), the API on origin B behind
// atomsphere_cors and basic_auth (user demo, password demo), and a copy of
// the API whose preflights must not be cached.
func browserAPIConfig(upstream string) string {
	api := func(port int, maxAge string) string {
		return fmt.Sprintf(`
http://:%d {
	browsertest_spy
	atomsphere_cors {
		expose_headers x-request-id
		max_age %s
		account acct-1 {
			origin %s GET DELETE
		}
		account acct-none
	}
	basic_auth /api/* {
		demo $2a$10$EjKxOMqe6BWunYrjzSUfFeh46V5YrY0UFA06zS7aJ1CJCZOgwFzIO
	}
	reverse_proxy %s
}
`, port, maxAge, pageOrigin, upstream)
	}
	return `{
	admin localhost:2991
	default_bind 127.0.0.1
}

http://:9101, http://:9103 {
	root * testdata
	file_server
}
` + api(9102, "1h") + api(9104, "0s")
}

// ---- the spy: what reached the module ----

// spiedRequest is one request as it reached atomsphere_cors.
type spiedRequest struct {
	Host, Method, Path string
	Origin             string
	ReqMethod          string // Access-Control-Request-Method
	ReqHeaders         string // Access-Control-Request-Headers
	OtherReqHeaders    []string
	Authorization      bool
}

func (r spiedRequest) isPreflight() bool { return r.Method == http.MethodOptions && r.ReqMethod != "" }

var spy struct {
	mu   sync.Mutex
	reqs []spiedRequest
}

func spyReset() {
	spy.mu.Lock()
	spy.reqs = nil
	spy.mu.Unlock()
}

// spyRequests returns the requests for path that reached the module on
// host, in arrival order.
func spyRequests(host, path string) []spiedRequest {
	spy.mu.Lock()
	defer spy.mu.Unlock()
	var out []spiedRequest
	for _, r := range spy.reqs {
		if r.Host == host && r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

func spyPreflights(host, path string) []spiedRequest {
	var out []spiedRequest
	for _, r := range spyRequests(host, path) {
		if r.isPreflight() {
			out = append(out, r)
		}
	}
	return out
}

// browserSpy is a test-only handler, ordered before every other
// directive, that records each request before passing it on. It records
// before the response is written, so a call that the page has seen
// finish is always in the record: counting needs no waiting.
type browserSpy struct{}

func (browserSpy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.browsertest_spy",
		New: func() caddy.Module { return new(browserSpy) },
	}
}

func (browserSpy) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	rec := spiedRequest{
		Host:          r.Host,
		Method:        r.Method,
		Path:          r.URL.Path,
		Origin:        r.Header.Get("Origin"),
		ReqMethod:     r.Header.Get("Access-Control-Request-Method"),
		ReqHeaders:    r.Header.Get("Access-Control-Request-Headers"),
		Authorization: r.Header.Get("Authorization") != "",
	}
	for k := range r.Header {
		// Private/Local Network Access preflights add headers of their own.
		if strings.HasPrefix(k, "Access-Control-Request-") && k != "Access-Control-Request-Method" && k != "Access-Control-Request-Headers" {
			rec.OtherReqHeaders = append(rec.OtherReqHeaders, k)
		}
	}
	spy.mu.Lock()
	spy.reqs = append(spy.reqs, rec)
	spy.mu.Unlock()
	return next.ServeHTTP(w, r)
}

func (*browserSpy) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

func init() {
	caddy.RegisterModule(browserSpy{})
	httpcaddyfile.RegisterHandlerDirective("browsertest_spy", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		s := new(browserSpy)
		return s, s.UnmarshalCaddyfile(h.Dispenser)
	})
	httpcaddyfile.RegisterDirectiveOrder("browsertest_spy", httpcaddyfile.Before, "tracing")
}

// ---- the stub API upstream ----

// stubAPI is the API behind reverse_proxy. It answers every request with
// a JSON echo and a numbered X-Request-Id (listed in expose_headers), plus
// headers a page must never see: X-Secret (not exposed) and CORS headers
// of its own, which the module must remove (README, Behaviour): were they to
// reach the browser, Allow-Origin "*" would fail every credentialed call
// and Expose-Headers would reveal X-Secret.
type stubAPI struct {
	mu   sync.Mutex
	reqs []string // "METHOD /path"
}

func newStubAPI(t *testing.T) (*stubAPI, string) {
	s := &stubAPI{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.reqs = append(s.reqs, r.Method+" "+r.URL.Path)
		n := len(s.reqs)
		s.mu.Unlock()
		rid := "req-" + strconv.Itoa(n)
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("X-Request-Id", rid)
		h.Set("X-Secret", "not exposed")
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Expose-Headers", "x-secret")
		body, _ := json.Marshal(map[string]string{"method": r.Method, "path": r.URL.Path, "request_id": rid})
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return s, srv.Listener.Addr().String()
}

// requests returns the requests for path that reached the upstream.
func (s *stubAPI) requests(path string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, r := range s.reqs {
		if strings.HasSuffix(r, " "+path) {
			out = append(out, r)
		}
	}
	return out
}

// ---- the browser ----

// chromiumPath finds Debian's chromium. Without it the browser tests skip
// locally and fail in CI (CI=true), where .ci/run installs it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	msg := "headless Chromium not found: install the Debian package chromium (apt-get install chromium) to run the browser tests"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// corsFailure is Chromium's own verdict on a blocked load, from the
// DevTools Network domain.
type corsFailure struct {
	URL   string
	Error network.CorsError
	Param string // the failed parameter, e.g. the header not allowed
}

// browser is one headless Chromium with a fresh profile and one tab.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	urls     map[network.RequestID]string
	failures []corsFailure
	changed  chan struct{} // signalled when failures grows
	trace    []string      // Chromium's network events, for failures
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	return newBrowserFor(t, browserTestTimeout)
}

// newBrowserFor is newBrowser for a test that needs timeout in all.
func newBrowserFor(t *testing.T, timeout time.Duration) *browser {
	t.Helper()
	path := chromiumPath(t)
	profile := t.TempDir() // before the cleanup below, so removed after Chromium exits
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	actx, acancel := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(path),
		chromedp.UserDataDir(profile),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox, // the tests may run as root, in a container
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		// Loopback only: no QUIC, no proxy, none of Chromium's own calls home.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
	)
	bctx, bcancel := chromedp.NewContext(actx)
	b := &browser{t: t, ctx: bctx, urls: map[network.RequestID]string{}, changed: make(chan struct{}, 1)}
	t.Cleanup(func() {
		bcancel()
		acancel()
		cancel()
		if t.Failed() {
			b.mu.Lock()
			t.Logf("Chromium's network events:\n\t%s", strings.Join(b.trace, "\n\t"))
			b.mu.Unlock()
		}
	})
	if err := chromedp.Listen(bctx, b.onEvent); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return b
}

func (b *browser) onEvent(ev any) {
	b.traceEvent(ev)
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		b.mu.Lock()
		b.urls[ev.RequestID] = ev.Request.URL
		b.mu.Unlock()
	case *network.EventLoadingFailed:
		if ev.CorsErrorStatus == nil {
			return
		}
		b.mu.Lock()
		b.failures = append(b.failures, corsFailure{URL: b.urls[ev.RequestID], Error: ev.CorsErrorStatus.CorsError, Param: ev.CorsErrorStatus.FailedParameter})
		b.mu.Unlock()
		select {
		case b.changed <- struct{}{}:
		default:
		}
	}
}

// traceEvent keeps a line per network event, printed if the test fails.
func (b *browser) traceEvent(ev any) {
	var line string
	switch e := ev.(type) {
	case *network.EventRequestWillBeSent:
		line = fmt.Sprintf("request  %s %s %s %s", e.RequestID, e.Type, e.Request.Method, e.Request.URL)
	case *network.EventResponseReceived:
		line = fmt.Sprintf("response %s %s %d", e.RequestID, e.Type, e.Response.Status)
	case *network.EventLoadingFailed:
		line = fmt.Sprintf("failed   %s %s %s %+v", e.RequestID, e.Type, e.ErrorText, e.CorsErrorStatus)
	default:
		return
	}
	b.mu.Lock()
	b.trace = append(b.trace, line)
	b.mu.Unlock()
}

// open navigates the tab to the test page (or any page) and waits for it.
func (b *browser) open(url string) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, chromedp.Navigate(url)); err != nil {
		b.t.Fatalf("opening %s: %v", url, err)
	}
}

// fetchResult is what the page's script saw of one call.
type fetchResult struct {
	Status  int               `json:"status"`
	Type    string            `json:"type"`
	Headers map[string]string `json:"headers"` // the headers the script may read
	Body    string            `json:"body"`
	Error   string            `json:"error"` // set when fetch threw
}

// fetch runs call(url, init) of testdata/index.html in the page.
func (b *browser) fetch(url string, init map[string]any) fetchResult {
	b.t.Helper()
	u, _ := json.Marshal(url)
	i, _ := json.Marshal(init)
	res, err := chromedp.Run(b.ctx, chromedp.Evaluate[fetchResult](fmt.Sprintf("call(%s, %s)", u, i), chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("fetch %s in the page: %v", url, err)
	}
	return res
}

// corsFailureFor waits for Chromium's CORS verdict on a load of url. The
// page's TypeError and the DevTools event travel separately, so the event
// may come a moment after the page has its answer.
func (b *browser) corsFailureFor(url string) corsFailure {
	b.t.Helper()
	for {
		b.mu.Lock()
		for _, f := range b.failures {
			if f.URL == url {
				b.mu.Unlock()
				return f
			}
		}
		b.mu.Unlock()
		select {
		case <-b.changed:
		case <-b.ctx.Done():
			b.t.Fatalf("no CORS failure reported by Chromium for %s: %v", url, b.ctx.Err())
		}
	}
}

// sleep waits d, or fails the test when its time is up first.
func (b *browser) sleep(d time.Duration) {
	b.t.Helper()
	select {
	case <-time.After(d):
	case <-b.ctx.Done():
		b.t.Fatalf("sleeping %s: %v", d, b.ctx.Err())
	}
}

// ---- shared set-up and checks ----

// browserEnv is Caddy with the browser tests' config, the stub upstream,
// and a browser whose tab shows the test page of origin A.
type browserEnv struct {
	api *stubAPI
	b   *browser
}

func startBrowserEnv(t *testing.T) *browserEnv {
	t.Helper()
	chromiumPath(t) // skip before starting anything
	api, upstream := newStubAPI(t)
	spyReset()
	startCaddy(t, browserAPIConfig(upstream))
	b := newBrowser(t)
	b.open(pageOrigin + "/")
	return &browserEnv{api: api, b: b}
}

func basicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// hostOf returns the host:port of an origin, as the spy records it.
func hostOf(origin string) string { return strings.TrimPrefix(origin, "http://") }

func mustBeBlocked(t *testing.T, b *browser, url string, res fetchResult, want network.CorsError, wantParam string) {
	t.Helper()
	if !strings.HasPrefix(res.Error, "TypeError") {
		t.Errorf("page: want the call to %s to fail with a TypeError, got %+v", url, res)
	}
	f := b.corsFailureFor(url)
	if f.Error != want || (wantParam != "" && f.Param != wantParam) {
		t.Errorf("Chromium's CORS verdict on %s: got %s %q, want %s %q", url, f.Error, f.Param, want, wantParam)
	}
}

// wantNoCORSHeaders fails when a response carries any Access-Control-* header.
func wantNoCORSHeaders(t *testing.T, what string, h http.Header) {
	t.Helper()
	for k := range corsHeaders(h) {
		if k != "Vary" {
			t.Errorf("%s: unexpected %s: %q", what, k, h[k])
		}
	}
}

// wantNoLocalNetworkPreflight fails when Chromium added Private/Local
// Network Access headers: a page on loopback calling loopback needs none.
func wantNoLocalNetworkPreflight(t *testing.T, reqs []spiedRequest) {
	t.Helper()
	for _, r := range reqs {
		if len(r.OtherReqHeaders) > 0 {
			t.Errorf("%s %s carried %v: a local-network preflight this module does not answer", r.Method, r.Path, r.OtherReqHeaders)
		}
	}
}

// ---- the tests ----

// An allowed DELETE with content-type: application/json and authorization
// succeeds in the page, and Chromium sent a preflight first, which the
// module answered without credentials (it runs before basic_auth).
func TestBrowserAllowedDeleteSendsPreflightFirst(t *testing.T) {
	env := startBrowserEnv(t)
	path := "/api/rest/v1/acct-1/Atom/delete-1"
	res := env.b.fetch(apiOrigin+path, map[string]any{
		"method":  "DELETE",
		"headers": map[string]string{"Content-Type": "application/json", "Authorization": basicAuth("demo", "demo")},
		"body":    `{"reason": "test"}`,
	})
	if res.Error != "" || res.Status != 200 || res.Type != "cors" || !strings.Contains(res.Body, `"method":"DELETE"`) {
		t.Fatalf("page: want the DELETE to succeed with 200, got %+v", res)
	}

	reqs := spyRequests(hostOf(apiOrigin), path)
	wantNoLocalNetworkPreflight(t, reqs)
	if len(reqs) != 2 || !reqs[0].isPreflight() || reqs[1].Method != "DELETE" {
		t.Fatalf("module saw %+v, want a preflight then the DELETE", reqs)
	}
	pre := reqs[0]
	if pre.Origin != pageOrigin || pre.ReqMethod != "DELETE" || pre.ReqHeaders != "authorization,content-type" || pre.Authorization {
		t.Errorf("preflight: got %+v, want Origin %s, DELETE, authorization,content-type and no credentials", pre, pageOrigin)
	}
	if !reqs[1].Authorization {
		t.Errorf("the DELETE reached the module without its Authorization header")
	}
	if got := env.api.requests(path); !slices.Equal(got, []string{"DELETE " + path}) {
		t.Errorf("upstream got %q, want the DELETE once", got)
	}
}

// An allowed GET succeeds and the script can read X-Request-Id, listed in
// expose_headers, but not X-Secret, which only the upstream's own
// (removed) Access-Control-Expose-Headers named.
func TestBrowserAllowedGetReadsExposedHeader(t *testing.T) {
	env := startBrowserEnv(t)
	path := "/api/rest/v1/acct-1/Atom/get-1"
	res := env.b.fetch(apiOrigin+path, map[string]any{
		"headers": map[string]string{"Authorization": basicAuth("demo", "demo")},
	})
	if res.Error != "" || res.Status != 200 {
		t.Fatalf("page: want the GET to succeed with 200, got %+v", res)
	}
	var body struct {
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal([]byte(res.Body), &body); err != nil || body.RequestID == "" {
		t.Fatalf("page: body %q: %v", res.Body, err)
	}
	if got := res.Headers["x-request-id"]; got != body.RequestID {
		t.Errorf("page: X-Request-Id read by the script = %q, want %q (it is in expose_headers)", got, body.RequestID)
	}
	if got, ok := res.Headers["x-secret"]; ok {
		t.Errorf("page: the script could read X-Secret = %q, which is not in expose_headers", got)
	}
	if n := len(spyPreflights(hostOf(apiOrigin), path)); n != 1 {
		t.Errorf("module saw %d preflights, want 1 (Authorization is not a safelisted header)", n)
	}
}

// A preflight is cached for max_age: identical calls within the time
// send no second preflight, even after Chromium's 5 s default for a
// preflight without Access-Control-Max-Age. The same calls to the API
// with max_age 0 preflight every time, so the count would show a missing
// or wrong Max-Age.
func TestBrowserPreflightCachedForMaxAge(t *testing.T) {
	env := startBrowserEnv(t)
	path := "/api/rest/v1/acct-1/Atom/cached-1"
	del := map[string]any{
		"method":  "DELETE",
		"headers": map[string]string{"Content-Type": "application/json", "Authorization": basicAuth("demo", "demo")},
	}
	call := func(origin string, n int) {
		t.Helper()
		if res := env.b.fetch(origin+path, del); res.Status != 200 {
			t.Fatalf("page: call %d to %s: want 200, got %+v", n, origin, res)
		}
	}

	call(apiOrigin, 1)
	call(apiOrigin, 2)
	if n := len(spyPreflights(hostOf(apiOrigin), path)); n != 1 {
		t.Fatalf("max_age 1h: module saw %d preflights for two identical calls, want 1", n)
	}
	// Past Chromium's default cache time of 5 s, the 1h still holds.
	env.b.sleep(6 * time.Second)
	call(apiOrigin, 3)
	if n := len(spyPreflights(hostOf(apiOrigin), path)); n != 1 {
		t.Errorf("max_age 1h: module saw %d preflights after 6 s, want still 1", n)
	}
	if got := env.api.requests(path); len(got) != 3 {
		t.Errorf("upstream got %q, want three DELETEs", got)
	}

	call(apiNoCache, 1)
	call(apiNoCache, 2)
	if n := len(spyPreflights(hostOf(apiNoCache), path)); n != 2 {
		t.Errorf("max_age 0: module saw %d preflights for two calls, want 2 (nothing cached)", n)
	}

	// Without a browser: the header the cache obeys.
	for origin, want := range map[string]string{apiOrigin: "3600", apiNoCache: "0"} {
		r, _ := doRequest(t, "OPTIONS", origin+path, http.Header{
			"Origin": {pageOrigin}, "Access-Control-Request-Method": {"DELETE"},
		})
		if got := r.Header.Get("Access-Control-Max-Age"); r.StatusCode != 204 || got != want {
			t.Errorf("%s preflight: %d, Access-Control-Max-Age %q, want 204 and %q", origin, r.StatusCode, got, want)
		}
	}
}

// Calls the rules do not allow fail in the page with a TypeError, for the
// reason Chromium reports, and never reach the API; the same requests sent
// without a browser show why: a 401 for the preflight, or a response
// without the headers the browser needed. Chromium checks a preflight's
// Access-Control-Allow-Origin before its status, so it reports a denied
// preflight (401, no Access-Control-* headers) as
// PreflightMissingAllowOriginHeader.
func TestBrowserDeniedCallsFailInPage(t *testing.T) {
	env := startBrowserEnv(t)
	auth := basicAuth("demo", "demo")
	cases := []struct {
		desc string
		page string // origin of the page making the call
		path string
		init map[string]any
		// Chromium's verdict
		wantCORS  network.CorsError
		wantParam string
		// The same call without a browser: the preflight, or (when the
		// browser sends none) the request itself.
		preflight bool
		reqHdr    http.Header
		check     func(t *testing.T, res *http.Response)
	}{{
		desc: "origin the account does not allow: preflight denied with 401",
		page: otherOrigin, path: "/api/rest/v1/acct-1/Atom/other-origin",
		init:     map[string]any{"headers": map[string]string{"Authorization": auth}},
		wantCORS: network.CorsErrorPreflightMissingAllowOriginHeader, preflight: true,
		reqHdr: http.Header{"Origin": {otherOrigin}, "Access-Control-Request-Method": {"GET"}, "Access-Control-Request-Headers": {"authorization"}},
		check:  wantDeniedPreflight,
	}, {
		desc: "origin the account does not allow, simple GET (no preflight): no Access-Control-Allow-Origin",
		page: otherOrigin, path: "/api/rest/v1/acct-1/Atom/other-origin-simple",
		init:     map[string]any{},
		wantCORS: network.CorsErrorMissingAllowOriginHeader,
		reqHdr:   http.Header{"Origin": {otherOrigin}},
		check: func(t *testing.T, res *http.Response) {
			// basic_auth's 401 stands, without CORS headers.
			if res.StatusCode != 401 {
				t.Errorf("status %d, want basic_auth's 401", res.StatusCode)
			}
			wantNoCORSHeaders(t, "simple GET from a disallowed origin", res.Header)
		},
	}, {
		desc: "method the rule does not allow (POST): preflight denied with 401",
		page: pageOrigin, path: "/api/rest/v1/acct-1/Atom/post",
		init:     map[string]any{"method": "POST", "headers": map[string]string{"Content-Type": "application/json", "Authorization": auth}, "body": "{}"},
		wantCORS: network.CorsErrorPreflightMissingAllowOriginHeader, preflight: true,
		reqHdr: http.Header{"Origin": {pageOrigin}, "Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"authorization,content-type"}},
		check:  wantDeniedPreflight,
	}, {
		desc: "account with no rules: preflight denied with 401",
		page: pageOrigin, path: "/api/rest/v1/acct-none/Atom/1",
		init:     map[string]any{"headers": map[string]string{"Authorization": auth}},
		wantCORS: network.CorsErrorPreflightMissingAllowOriginHeader, preflight: true,
		reqHdr: http.Header{"Origin": {pageOrigin}, "Access-Control-Request-Method": {"GET"}, "Access-Control-Request-Headers": {"authorization"}},
		check:  wantDeniedPreflight,
	}, {
		desc: "request header missing from allow_headers: preflight allowed, the browser refuses the header",
		page: pageOrigin, path: "/api/rest/v1/acct-1/Atom/custom-header",
		init:     map[string]any{"headers": map[string]string{"Authorization": auth, "X-Custom": "1"}},
		wantCORS: network.CorsErrorHeaderDisallowedByPreflightResponse, wantParam: "x-custom", preflight: true,
		reqHdr: http.Header{"Origin": {pageOrigin}, "Access-Control-Request-Method": {"GET"}, "Access-Control-Request-Headers": {"authorization,x-custom"}},
		check: func(t *testing.T, res *http.Response) {
			allow := res.Header.Get("Access-Control-Allow-Headers")
			if res.StatusCode != 204 || res.Header.Get("Access-Control-Allow-Origin") != pageOrigin {
				t.Errorf("preflight: %d %v, want 204 for the allowed origin", res.StatusCode, corsHeaders(res.Header))
			}
			if !strings.Contains(allow, "authorization") || strings.Contains(allow, "x-custom") {
				t.Errorf("Access-Control-Allow-Headers %q: want authorization listed, x-custom not", allow)
			}
		},
	}}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			env.b.open(tc.page + "/")
			url := apiOrigin + tc.path
			res := env.b.fetch(url, tc.init)
			mustBeBlocked(t, env.b, url, res, tc.wantCORS, tc.wantParam)

			reqs := spyRequests(hostOf(apiOrigin), tc.path)
			wantNoLocalNetworkPreflight(t, reqs)
			if tc.preflight && (len(reqs) != 1 || !reqs[0].isPreflight()) {
				t.Errorf("module saw %+v, want exactly the preflight", reqs)
			}
			if !tc.preflight && (len(reqs) != 1 || reqs[0].isPreflight()) {
				t.Errorf("module saw %+v, want exactly the GET, no preflight", reqs)
			}
			if got := env.api.requests(tc.path); len(got) != 0 {
				t.Errorf("upstream got %q, want nothing", got)
			}

			method := "GET"
			if tc.preflight {
				method = "OPTIONS"
			}
			r, _ := doRequest(t, method, url, tc.reqHdr)
			tc.check(t, r)
		})
	}
}

// Access-Control-Allow-Methods cannot stop a CORS-safelisted method (GET,
// HEAD, POST): once a preflight for the allowed GET is cached, a POST with
// the same headers to the same URL goes out with no new preflight, and the
// API receives it. The module still withholds its CORS headers from the
// response (the origin may not POST), so the page gets a TypeError and
// cannot read the result. Method rules protect reads, not the request;
// the API must authorise writes itself.
func TestBrowserSafelistedMethodAfterCachedPreflight(t *testing.T) {
	env := startBrowserEnv(t)
	path := "/api/rest/v1/acct-1/Atom"
	hdr := map[string]string{"Content-Type": "application/json", "Authorization": basicAuth("demo", "demo")}
	if res := env.b.fetch(apiOrigin+path, map[string]any{"headers": hdr}); res.Status != 200 {
		t.Fatalf("page: allowed GET: want 200, got %+v", res)
	}
	res := env.b.fetch(apiOrigin+path, map[string]any{"method": "POST", "headers": hdr, "body": "{}"})
	mustBeBlocked(t, env.b, apiOrigin+path, res, network.CorsErrorMissingAllowOriginHeader, "")

	var seen []string
	for _, r := range spyRequests(hostOf(apiOrigin), path) {
		seen = append(seen, r.Method)
	}
	if !slices.Equal(seen, []string{"OPTIONS", "GET", "POST"}) {
		t.Errorf("module saw %q, want the GET's preflight, the GET, and the POST with no preflight of its own", seen)
	}
	if got := env.api.requests(path); !slices.Equal(got, []string{"GET " + path, "POST " + path}) {
		t.Errorf("upstream got %q, want the GET and the POST", got)
	}
	r, _ := doRequest(t, "POST", apiOrigin+path, http.Header{"Origin": {pageOrigin}, "Authorization": {basicAuth("demo", "demo")}})
	if r.StatusCode != 200 || r.Header.Get("Vary") != "Origin" {
		t.Errorf("POST without a browser: %d %v, want the API's 200 with only Vary: Origin", r.StatusCode, corsHeaders(r.Header))
	}
	wantNoCORSHeaders(t, "POST from an origin allowed only GET and DELETE", r.Header)
}

func wantDeniedPreflight(t *testing.T, res *http.Response) {
	t.Helper()
	if res.StatusCode != 401 {
		t.Errorf("preflight without a browser: status %d, want 401", res.StatusCode)
	}
	wantNoCORSHeaders(t, "denied preflight", res.Header)
}

// A normal request that basic_auth rejects (allowed origin, wrong
// password) shows its 401 to the script instead of an opaque CORS error:
// the module's headers survive the error response (README, Behaviour).
//
// The API is on 127.0.0.1, another site than the page on localhost. For a
// same-site API (localhost:9101 to localhost:9102) Chromium first answers
// basic_auth's WWW-Authenticate with its sign-in dialog, even for fetch(),
// and only a cancelled dialog lets the 401 reach the script; headless, the
// call would wait for a user forever.
func TestBrowserBasicAuthRejectionIsReadable(t *testing.T) {
	env := startBrowserEnv(t)
	for _, tc := range []struct {
		desc       string
		path       string
		init       map[string]any
		preflights int
	}{
		{"GET with a wrong password (preflighted)", "/api/rest/v1/acct-1/Atom/bad-password",
			map[string]any{"headers": map[string]string{"Authorization": basicAuth("demo", "wrong")}}, 1},
		{"DELETE with a wrong password (preflighted)", "/api/rest/v1/acct-1/Atom/bad-password-delete",
			map[string]any{"method": "DELETE", "headers": map[string]string{"Content-Type": "application/json", "Authorization": basicAuth("demo", "wrong")}}, 1},
		{"GET without credentials (simple request)", "/api/rest/v1/acct-1/Atom/no-password", map[string]any{}, 0},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			url := apiOrigin + tc.path
			res := env.b.fetch(url, tc.init)
			if res.Error != "" || res.Status != 401 || res.Type != "cors" {
				t.Errorf("page: want basic_auth's 401 readable by the script, got %+v", res)
			}
			if n := len(spyPreflights(hostOf(apiOrigin), tc.path)); n != tc.preflights {
				t.Errorf("module saw %d preflights, want %d", n, tc.preflights)
			}
			if got := env.api.requests(tc.path); len(got) != 0 {
				t.Errorf("upstream got %q, want nothing", got)
			}
		})
	}
	r, _ := doRequest(t, "GET", apiOrigin+"/api/rest/v1/acct-1/Atom/bad-password", http.Header{
		"Origin": {pageOrigin}, "Authorization": {basicAuth("demo", "wrong")},
	})
	if r.StatusCode != 401 || r.Header.Get("Access-Control-Allow-Origin") != pageOrigin || r.Header.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("without a browser: %d %v, want 401 with the allowed origin's CORS headers", r.StatusCode, corsHeaders(r.Header))
	}
}

// The demo of Caddyfile.example works when clicked: each button of
// demo/index.html shows the outcome the page promises. The example listens
// on loopback alone, and a sign-in to its CORS page that fails or is
// cancelled shows a line of text rather than a blank page.
func TestBrowserDemoPage(t *testing.T) {
	chromiumPath(t)
	t.Chdir("..") // the repository root: Caddyfile.example serves its page from demo/
	cfg, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	wantLoopbackOnly(t, cfg)
	startCaddy(t, string(cfg))
	importDemoAccounts(t)
	b := newBrowserFor(t, 45*time.Second)
	b.open("http://localhost:8080/")

	// Outcomes in click order. The POST goes to the collection URL, whose
	// preflight nothing has cached, so it is always asked for and denied.
	clickAll(t, b)

	// The CORS page's sign-in, cancelled or with a wrong password, before
	// Chromium has any credentials for it: basic_auth's WWW-Authenticate
	// still reaches the browser (it raises the sign-in dialog, answered here
	// through the DevTools Fetch domain), and the 401 shows the example's
	// text. The API's own 401s keep their empty body.
	demoSignInFailures(t, b)

	// The newcomer's tour: on account-123456's CORS page, linked from the
	// demo page, remove the demo page's origin and save: the allowed
	// buttons are blocked; add it back with GET and DELETE: they work.
	href := run[string](t, b.ctx, `document.getElementById('cors-page').href`)
	if href != "http://localhost:8081/settings/cors/" {
		t.Fatalf("the demo page links to %q", href)
	}
	signInAt(t, b.ctx, "account-123456", "http://localhost:8081/settings/*")
	openPage(t, b.ctx, href, "account-123456")
	run[bool](t, b.ctx, `[...document.querySelectorAll('#rule-rows tr.rule')].find(r => r.querySelector('input.origin').value === 'http://localhost:8080').querySelector('button.remove').click(); true`)
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved") {
		t.Fatalf("saving on the CORS page: %q", got)
	}
	b.open("http://localhost:8080/")
	for _, button := range []string{"get", "delete"} {
		if text := clickDemo(t, b, button); !strings.HasPrefix(text, "blocked by CORS") {
			t.Errorf("%s after the origin was removed: %q, want blocked", button, text)
		}
	}
	openPage(t, b.ctx, href, "account-123456")
	addRule(t, b.ctx, "http://localhost:8080", "GET", "DELETE")
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved") {
		t.Fatalf("saving on the CORS page: %q", got)
	}
	b.open("http://localhost:8080/")
	clickAll(t, b)
}

// wantLoopbackOnly fails unless every listener of the Caddyfile cfg, its
// sites' and its admin endpoint's, is on a loopback address: the demo's
// passwords are published.
func wantLoopbackOnly(t *testing.T, cfg []byte) {
	t.Helper()
	cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(cfg, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		t.Fatalf("adapting Caddyfile.example: %v", err)
	}
	var c struct {
		Admin struct {
			Listen string `json:"listen"`
		} `json:"admin"`
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfgJSON, &c); err != nil {
		t.Fatal(err)
	}
	addrs := []string{c.Admin.Listen}
	for _, srv := range c.Apps.HTTP.Servers {
		addrs = append(addrs, srv.Listen...)
	}
	if len(addrs) < 3 {
		t.Fatalf("Caddyfile.example listens on %q: want the admin endpoint and the two sites", addrs)
	}
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(strings.TrimPrefix(a, "tcp/"))
		if ip := net.ParseIP(host); err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
			t.Errorf("Caddyfile.example listens on %q: want a loopback address", a)
		}
	}
}

// demoSignInFailures checks the CORS page's failed sign-ins in the demo,
// in a tab of their own, and that the API's 401s are not shaped by the
// same error route.
func demoSignInFailures(t *testing.T, b *browser) {
	t.Helper()
	const page = "http://localhost:8081/settings/cors/"
	for _, tc := range []struct {
		desc    string
		answers []signInAnswer
	}{
		{"sign-in dialog cancelled", nil},
		{"wrong password, then the dialog cancelled", []signInAnswer{{"account-123456", "wrong"}}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			challenges, status, text := failedSignIn(t, b, page, tc.answers...)
			if len(challenges) != len(tc.answers)+1 {
				t.Errorf("Chromium asked for credentials %d times, want %d: the 401 must carry basic_auth's WWW-Authenticate", len(challenges), len(tc.answers)+1)
			}
			for _, c := range challenges {
				if c.Source != fetch.AuthChallengeSourceServer || c.Scheme != "basic" || c.Realm != "restricted" {
					t.Errorf("sign-in challenge %+v, want basic_auth's (server, basic, realm restricted)", *c)
				}
			}
			if status != 401 || !strings.HasPrefix(text, "Sign-in failed: the CORS page needs your account's user name and password") {
				t.Errorf("the tab shows status %d and %q, want 401 and the example's sign-in text", status, text)
			}
		})
	}

	// The same without a browser, and the API's own 401s: basic_auth's
	// rejection (readable by the allowed origin, WWW-Authenticate kept) and
	// a denied preflight, both with an empty body.
	res, body := doRequest(t, "GET", page+"rules", http.Header{"Authorization": {basicAuth("account-123456", "wrong")}})
	if res.StatusCode != 401 || res.Header.Get("WWW-Authenticate") == "" || !strings.HasPrefix(body, "Sign-in failed:") {
		t.Errorf("CORS page, wrong password: %d, WWW-Authenticate %q, body %q; want 401, basic_auth's challenge and the sign-in text", res.StatusCode, res.Header.Get("WWW-Authenticate"), body)
	}
	api := "http://localhost:8081/api/rest/v1/account-123456/Atom/1"
	res, body = doRequest(t, "GET", api, http.Header{"Origin": {"http://localhost:8080"}, "Authorization": {basicAuth("demo", "wrong")}})
	if res.StatusCode != 401 || body != "" || res.Header.Get("WWW-Authenticate") == "" || res.Header.Get("Access-Control-Allow-Origin") != "http://localhost:8080" {
		t.Errorf("API, wrong password: %d %v, WWW-Authenticate %q, body %q; want basic_auth's 401, empty, with the allowed origin's CORS headers", res.StatusCode, corsHeaders(res.Header), res.Header.Get("WWW-Authenticate"), body)
	}
	res, body = doRequest(t, "OPTIONS", api, http.Header{"Origin": {"http://localhost:8080"}, "Access-Control-Request-Method": {"POST"}})
	if res.StatusCode != 401 || body != "" {
		t.Errorf("API, denied preflight: %d, body %q; want 401 with an empty body", res.StatusCode, body)
	}
	wantNoCORSHeaders(t, "denied preflight", res.Header)
}

// signInAnswer is one answer to a sign-in dialog: a user name and
// password.
type signInAnswer struct{ user, password string }

// failedSignIn opens url in a new tab of b and answers its sign-in
// dialogs as a user would: with answers in turn, then by cancelling. It
// returns the challenges Chromium raised, and the status and text of the
// page the tab then shows.
func failedSignIn(t *testing.T, b *browser, url string, answers ...signInAnswer) (challenges []*fetch.AuthChallenge, status int, text string) {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx)
	defer cancel()
	var (
		mu   sync.Mutex
		seen []*fetch.AuthChallenge
	)
	answerSignIns(t, ctx, url+"*", func(c *fetch.AuthChallenge) *fetch.AuthChallengeResponse {
		mu.Lock()
		n := len(seen)
		seen = append(seen, c)
		mu.Unlock()
		if n < len(answers) {
			return &fetch.AuthChallengeResponse{Response: fetch.AuthChallengeResponseResponseProvideCredentials,
				Username: answers[n].user, Password: answers[n].password}
		}
		return &fetch.AuthChallengeResponse{Response: fetch.AuthChallengeResponseResponseCancelAuth}
	})
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("opening %s: %v", url, err)
	}
	status = run[int](t, ctx, `performance.getEntriesByType('navigation')[0].responseStatus`)
	text = run[string](t, ctx, `document.body.innerText`)
	mu.Lock()
	challenges = slices.Clone(seen)
	mu.Unlock()
	return challenges, status, text
}

// importDemoAccounts imports demo/accounts.ndjson into the demo's store,
// as scripts/demo does.
func importDemoAccounts(t *testing.T) {
	t.Helper()
	f, err := os.Open("demo/accounts.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := http.Post("http://localhost:2019/atomsphere_cors/demo/import", "application/x-ndjson", f)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("importing the demo accounts: %d", res.StatusCode)
	}
}

// clickDemo clicks a button of the demo page and returns the outcome it shows.
func clickDemo(t *testing.T, b *browser, button string) string {
	t.Helper()
	sel := "#" + button + "-result"
	if err := chromedp.Do(b.ctx, chromedp.Click(chromedp.CSS("#"+button))); err != nil {
		t.Fatalf("clicking %s: %v", button, err)
	}
	text, err := chromedp.Run(b.ctx, chromedp.Poll[string](
		fmt.Sprintf(`(t => t && t !== '...' ? t : null)(document.querySelector(%q).textContent)`, sel),
		chromedp.WithPollingMutation()))
	if err != nil {
		t.Fatalf("waiting for %s: %v", sel, err)
	}
	return text
}

// clickAll clicks each button of the demo page and checks the outcome the
// page promises.
func clickAll(t *testing.T, b *browser) {
	t.Helper()
	for _, tc := range []struct {
		button    string
		wantClass string
		want      []string // substrings of the outcome text
		blocked   string   // the API path of a blocked call
	}{
		{"get", "ok", []string{"status 200, X-Request-Id ", `"account": "account-123456"`, `"method": "GET"`}, ""},
		{"delete", "ok", []string{"status 200, X-Request-Id ", `"method": "DELETE"`}, ""},
		{"post", "fail", []string{"blocked by CORS: TypeError"}, "account-123456/Atom"},
		{"other", "fail", []string{"blocked by CORS: TypeError"}, "account-987654/Atom/3456789a"},
	} {
		t.Run(tc.button, func(t *testing.T) {
			sel := "#" + tc.button + "-result"
			text := clickDemo(t, b, tc.button)
			class, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector(%q).className`, sel)))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %s", tc.button, text)
			if class != tc.wantClass {
				t.Errorf("%s shows class %q, want %q", sel, class, tc.wantClass)
			}
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("%s shows %q, want it to contain %q", sel, text, w)
				}
			}
			if tc.blocked != "" {
				// A denied preflight: a 401 without Access-Control-Allow-Origin.
				url := "http://localhost:8081/api/rest/v1/" + tc.blocked
				if f := b.corsFailureFor(url); f.Error != network.CorsErrorPreflightMissingAllowOriginHeader {
					t.Errorf("Chromium's CORS verdict on %s: got %s, want %s", url, f.Error, network.CorsErrorPreflightMissingAllowOriginHeader)
				}
			}
		})
	}
}
