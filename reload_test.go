package atomspherecors

// Live reconfiguration (docs/behaviour.md §8) and the fleet example of
// docs/operating.md, all on loopback:
//
//   - TestReloadUnderLoad keeps allowed and denied preflights and normal
//     requests going from a few clients while it applies more than 50
//     admin API edits of single accounts (PUT, POST, PATCH, DELETE on
//     /id/cors/accounts/<id>), two refused edits and one full POST /load,
//     and checks every answer, and each edit on the very next request.
//   - TestFleetPullAndPush runs testdata/fleet/bootstrap.json, which pulls
//     testdata/fleet/caddy.json from a central endpoint (Caddy's own
//     admin.config.load), follows a change published there, and pushes the
//     same JSON to the admin endpoint (POST /load).
//
// Ports: admin localhost:2992, HTTP 127.0.0.1:9200 (load), 9210 (fleet
// API), 9250 (fleet central endpoint).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/testkit"
)

const (
	reloadAdmin    = "http://localhost:2992"
	reloadHTTPAddr = "127.0.0.1:9200"
	reloadTag      = "cors" // the handler's "@id"

	fleetCentralAddr = "127.0.0.1:9250"
	fleetAPI         = "http://127.0.0.1:9210"
)

// reloadConfig is the load test's whole Caddy config: the handler,
// tagged "@id": "cors", in front of a static "ok".
func reloadConfig(accounts map[string][]policy.Rule) []byte {
	return mustJSON(map[string]any{
		"admin": map[string]any{
			"listen": "localhost:2992",
			"config": map[string]any{"persist": false},
		},
		// Each of the ~70 reloads logs a dozen info lines: keep warnings only.
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "WARN"}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"reload": map[string]any{
			"listen":    []string{reloadHTTPAddr},
			"protocols": []string{"h1"}, // plain HTTP: no h2/h3 warnings per reload
			"routes": []any{map[string]any{"handle": []any{
				map[string]any{"@id": reloadTag, "handler": "atomsphere_cors", "accounts": accounts},
				map[string]any{"handler": "static_response", "status_code": 200, "body": "ok"},
			}}},
		}}}},
	})
}

// probe is one request and the exact answer it must get.
type probe struct {
	name      string
	base      string // scheme://host:port of the server
	method    string
	path      string
	hdr       http.Header
	status    int
	cors      http.Header // the Access-Control-* and Vary headers, exactly
	body      string
	preflight bool
}

// preflightProbe asks account acct whether origin may use method;
// allowed is the Access-Control-Allow-Methods value expected, "" for a
// denial (401, Vary only).
func preflightProbe(base, acct, origin, method, allowed string) probe {
	p := probe{
		name:      fmt.Sprintf("preflight %s %s %s", acct, origin, method),
		base:      base,
		method:    http.MethodOptions,
		path:      "/api/rest/v1/" + acct + "/Atom/1",
		hdr:       http.Header{"Origin": {origin}, "Access-Control-Request-Method": {method}},
		preflight: true,
	}
	if allowed == "" {
		p.status = http.StatusUnauthorized
		p.cors = http.Header{"Vary": {wantVaryPreflight}}
		return p
	}
	p.status = http.StatusNoContent
	p.cors = http.Header{
		"Access-Control-Allow-Origin":      {origin},
		"Access-Control-Allow-Credentials": {"true"},
		"Access-Control-Allow-Methods":     {allowed},
		"Access-Control-Allow-Headers":     {wantAllowHeaders},
		"Access-Control-Max-Age":           {"3600"},
		"Vary":                             {wantVaryPreflight},
	}
	return p
}

// normalProbe sends GET from origin ("" for none) to account acct; the
// next handler answers 200 with body either way.
func normalProbe(base, acct, origin string, allowed bool, body string) probe {
	p := probe{
		name:   fmt.Sprintf("GET %s %s", acct, origin),
		base:   base,
		method: http.MethodGet,
		path:   "/api/rest/v1/" + acct + "/Atom/1",
		hdr:    http.Header{},
		status: http.StatusOK,
		cors:   http.Header{"Vary": {"Origin"}},
		body:   body,
	}
	if origin != "" {
		p.hdr.Set("Origin", origin)
	}
	if allowed {
		p.cors["Access-Control-Allow-Origin"] = []string{origin}
		p.cors["Access-Control-Allow-Credentials"] = []string{"true"}
	}
	return p
}

// newProbeClient is a keep-alive client like a browser's: requests
// reuse connections, also across reloads.
func newProbeClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8},
		Timeout:   10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// maxAttempts bounds the retries of one request.
const maxAttempts = 5

// result of one probe: retries is the number of times the request was
// sent again because its connection closed before any response byte (by
// send itself, or silently by Go's transport, which replays idempotent
// requests on a closed keep-alive connection as browsers do); lost and
// wrong say how it failed.
type result struct {
	retries int   // sent again by send
	replays int   // sent again by Go's transport
	retryOf error // why send sent it again, the last time
	lost    bool
	wrong   bool
	err     error
}

// send sends p and checks the answer, retrying only a request that got
// no response byte at all.
func send(c *http.Client, p probe) result {
	var r result
	for attempt := 1; ; attempt++ {
		var gotByte atomic.Bool
		var conns atomic.Int32
		trace := &httptrace.ClientTrace{
			GotConn:              func(httptrace.GotConnInfo) { conns.Add(1) },
			GotFirstResponseByte: func() { gotByte.Store(true) },
		}
		ctx := httptrace.WithClientTrace(context.Background(), trace)
		req, err := http.NewRequestWithContext(ctx, p.method, p.base+p.path, nil)
		if err != nil {
			r.wrong, r.err = true, err
			return r
		}
		req.Header = p.hdr.Clone()
		res, err := c.Do(req)
		if n := conns.Load(); n > 1 {
			r.replays += int(n - 1)
		}
		if err != nil {
			if !gotByte.Load() && attempt < maxAttempts {
				r.retries++
				r.retryOf = err
				continue
			}
			r.lost = true
			r.err = fmt.Errorf("%s: lost after %d attempts (a response byte arrived: %v): %v",
				p.name, attempt, gotByte.Load(), err)
			return r
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			r.lost = true
			r.err = fmt.Errorf("%s: response cut short: %v", p.name, err)
			return r
		}
		got := corsHeaders(res.Header)
		if res.StatusCode != p.status || !reflect.DeepEqual(got, p.cors) || string(body) != p.body {
			r.wrong = true
			r.err = fmt.Errorf("%s: got %d %v %q, want %d %v %q",
				p.name, res.StatusCode, got, body, p.status, p.cors, p.body)
		}
		return r
	}
}

// loadStats counts the load clients' requests.
type loadStats struct {
	requests, preflights, normal, retries, replays, wrong, lost atomic.Int64

	mu      sync.Mutex
	errors  []string // the first few failures
	retried []string // why the first few retries were needed
}

func (s *loadStats) record(p probe, r result) {
	s.requests.Add(1)
	if p.preflight {
		s.preflights.Add(1)
	} else {
		s.normal.Add(1)
	}
	s.retries.Add(int64(r.retries))
	s.replays.Add(int64(r.replays))
	if r.retryOf != nil {
		s.mu.Lock()
		if len(s.retried) < 3 {
			s.retried = append(s.retried, r.retryOf.Error())
		}
		s.mu.Unlock()
	}
	if r.err == nil {
		return
	}
	if r.lost {
		s.lost.Add(1)
	} else {
		s.wrong.Add(1)
	}
	s.mu.Lock()
	if len(s.errors) < 10 {
		s.errors = append(s.errors, r.err.Error())
	}
	s.mu.Unlock()
}

// TestReloadUnderLoad: admin API edits and a full POST /load under a
// steady stream of requests; no request may be lost or wrongly answered,
// and each edit holds for the next request after the admin call returns.
func TestReloadUnderLoad(t *testing.T) {
	const (
		base       = "http://" + reloadHTTPAddr
		clients    = 4
		maxPerClnt = 200000           // bound on each client's requests
		budget     = 25 * time.Second // bound on the whole run
		iterations = 12               // 5 edits each, plus 3 resets
		editPause  = 40 * time.Millisecond
	)
	deadline := time.Now().Add(budget)

	busyBase := []policy.Rule{{Origin: "https://busy.example", Methods: []string{"GET", "PUT"}}}
	initial := map[string][]policy.Rule{
		"steady": {{Origin: "https://steady.example"}}, // GET, POST, DELETE
		"busy":   busyBase,
	}
	startCaddy(t, "json", string(reloadConfig(initial)))

	// What the load clients send, round robin. "busy" is edited all
	// along (rules appended, the list replaced), never its
	// busy.example rule; "steady" is only replaced by the POST /load,
	// with the same rules.
	load := []probe{
		preflightProbe(base, "steady", "https://steady.example", "DELETE", "GET, POST, DELETE"),
		normalProbe(base, "steady", "https://steady.example", true, "ok"),
		preflightProbe(base, "busy", "https://busy.example", "PUT", "GET, PUT"),
		normalProbe(base, "busy", "https://busy.example", true, "ok"),
		preflightProbe(base, "steady", "https://evil.example", "GET", ""),
		preflightProbe(base, "busy", "https://busy.example", "DELETE", ""),
		normalProbe(base, "busy", "", false, "ok"),
	}

	// Every load probe answers right before the load starts.
	pc := newProbeClient()
	for _, p := range load {
		if r := send(pc, p); r.err != nil {
			t.Fatalf("before the load: %v", r.err)
		}
	}

	var stats loadStats
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	stopLoad := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer stopLoad() // also when the editor fails
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := newProbeClient()
			for i := 0; i < maxPerClnt && time.Now().Before(deadline); i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := load[(w+i)%len(load)]
				stats.record(p, send(c, p))
			}
		}(w)
	}

	// The editor: each admin call, then the requests that must see it.
	var edits, refused, checks int
	checkAll := func(after string, ps ...probe) {
		t.Helper()
		for _, p := range ps {
			checks++
			if r := send(pc, p); r.err != nil {
				t.Errorf("after %s: %v", after, r.err)
			}
		}
	}
	edit := func(method, acct string, body any, ps ...probe) {
		t.Helper()
		path := "/id/" + reloadTag + "/accounts/" + acct
		var b []byte
		if body != nil {
			b = mustJSON(body)
		}
		status, out := adminCall(t, reloadAdmin, method, path, b)
		what := fmt.Sprintf("%s %s %s", method, path, b)
		if status != http.StatusOK {
			t.Fatalf("%s: admin API answered %d %s", what, status, out)
		}
		edits++
		checkAll(what, ps...)
		// Let the load run on this config a moment: pacing only, so
		// the edits spread over a few seconds of load.
		time.Sleep(editPause)
	}
	busy := append([]policy.Rule(nil), busyBase...) // what "busy" holds now

	for i := 0; i < iterations; i++ {
		if time.Now().After(deadline) {
			t.Errorf("out of time after %d edits", edits)
			break
		}
		acct := fmt.Sprintf("acct-%d", i)
		o1 := fmt.Sprintf("https://new-%d.example", i)
		o2 := fmt.Sprintf("https://added-%d.example:8443", i)
		o3 := fmt.Sprintf("http://patched-%d.example:8080", i)
		extra := fmt.Sprintf("https://busy-extra-%d.example", i)

		// PUT a new account: its origin is allowed at once.
		edit("PUT", acct, []policy.Rule{{Origin: o1, Methods: []string{"GET"}}},
			preflightProbe(base, acct, o1, "GET", "GET"),
			preflightProbe(base, acct, o1, "POST", ""),
			normalProbe(base, acct, o1, true, "ok"))
		// POST a rule to it: appended.
		edit("POST", acct, policy.Rule{Origin: o2, Methods: []string{"PUT", "PATCH"}},
			preflightProbe(base, acct, o2, "PATCH", "PUT, PATCH"),
			preflightProbe(base, acct, o1, "GET", "GET"))
		// PATCH its rule list: replaced.
		edit("PATCH", acct, []policy.Rule{{Origin: o3}},
			preflightProbe(base, acct, o3, "DELETE", "GET, POST, DELETE"),
			preflightProbe(base, acct, o1, "GET", ""),
			preflightProbe(base, acct, o2, "PUT", ""))
		// POST a rule to the account the load clients use.
		extraRule := policy.Rule{Origin: extra, Methods: []string{"GET"}}
		edit("POST", "busy", extraRule,
			preflightProbe(base, "busy", extra, "GET", "GET"),
			preflightProbe(base, "busy", "https://busy.example", "PUT", "GET, PUT"))
		busy = append(busy, extraRule)
		// DELETE the account: its preflights are refused at once.
		edit("DELETE", acct, nil,
			preflightProbe(base, acct, o3, "DELETE", ""),
			normalProbe(base, acct, o3, false, "ok"))

		if i%4 == 3 {
			// PATCH the busy account back to its base list.
			edit("PATCH", "busy", busyBase,
				preflightProbe(base, "busy", extra, "GET", ""),
				preflightProbe(base, "busy", "https://busy.example", "PUT", "GET, PUT"))
			busy = append([]policy.Rule(nil), busyBase...)
		}

		if i == 1 {
			// A bad edit is refused, naming account, rule and origin,
			// and the running rules keep serving unchanged.
			bad := policy.Rule{Origin: "https://bad.example/path", Methods: []string{"GET"}}
			status, out := adminCall(t, reloadAdmin, "POST", "/id/"+reloadTag+"/accounts/busy", mustJSON(bad))
			refused++
			msg := apiError(t, out)
			t.Logf("refused edit: POST /id/%s/accounts/busy %s -> %d %s", reloadTag, mustJSON(bad), status, strings.TrimSpace(out))
			// Caddy v2.11.9 answers a config edit under /config/ or /id/
			// that fails to provision with 500 (its changeConfig error is
			// not an APIError); POST /load answers 400 below.
			if status < 400 || status > 599 {
				t.Errorf("bad edit: admin API answered %d, want an error status", status)
			}
			for _, want := range []string{`account "busy"`, fmt.Sprintf("rule %d", len(busy)+1), `"https://bad.example/path"`, "path"} {
				if !strings.Contains(msg, want) {
					t.Errorf("bad edit: error %q does not name %s", msg, want)
				}
			}
			checkAll("the refused edit", load...)
			checkAll("the refused edit", preflightProbe(base, "busy", "https://bad.example", "GET", ""),
				preflightProbe(base, "busy", extra, "GET", "GET"))
			if got := accountRules(t, "busy"); !reflect.DeepEqual(got, busy) {
				t.Errorf("after the refused edit, busy holds %v, want %v", got, busy)
			}

			// The same mistake in a whole config sent to POST /load.
			cfg := map[string][]policy.Rule{"steady": initial["steady"], "busy": append(append([]policy.Rule(nil), busy...), bad)}
			status, out = adminCall(t, reloadAdmin, "POST", "/load", reloadConfig(cfg))
			refused++
			msg = apiError(t, out)
			t.Logf("refused load: POST /load -> %d %s", status, strings.TrimSpace(out))
			if status != http.StatusBadRequest {
				t.Errorf("bad load: admin API answered %d, want 400", status)
			}
			for _, want := range []string{`account "busy"`, fmt.Sprintf("rule %d", len(busy)+1), `"https://bad.example/path"`} {
				if !strings.Contains(msg, want) {
					t.Errorf("bad load: error %q does not name %s", msg, want)
				}
			}
			checkAll("the refused load", load...)
			if got := accountRules(t, "busy"); !reflect.DeepEqual(got, busy) {
				t.Errorf("after the refused load, busy holds %v, want %v", got, busy)
			}
		}

		if i == iterations/2 {
			// One full POST /load: a new account, busy back to base.
			cfg := map[string][]policy.Rule{
				"steady": initial["steady"],
				"busy":   busyBase,
				"loaded": {{Origin: "https://loaded.example", Methods: []string{"POST"}}},
			}
			status, out := adminCall(t, reloadAdmin, "POST", "/load", reloadConfig(cfg))
			if status != http.StatusOK {
				t.Fatalf("POST /load: %d %s", status, out)
			}
			checkAll("POST /load",
				preflightProbe(base, "loaded", "https://loaded.example", "POST", "POST"),
				preflightProbe(base, "busy", extra, "GET", ""))
			busy = append([]policy.Rule(nil), busyBase...)
		}
	}
	stopLoad()

	t.Logf("load: requests=%d preflights=%d normal=%d retries=%d (resent by the client %d, replayed by Go's transport %d) "+
		"failures=%d (wrong=%d lost=%d); edits=%d (+1 POST /load, %d refused), editor checks=%d",
		stats.requests.Load(), stats.preflights.Load(), stats.normal.Load(),
		stats.retries.Load()+stats.replays.Load(), stats.retries.Load(), stats.replays.Load(),
		stats.wrong.Load()+stats.lost.Load(), stats.wrong.Load(), stats.lost.Load(),
		edits, refused, checks)
	for _, e := range stats.retried {
		t.Logf("retried: %s", e)
	}
	for _, e := range stats.errors {
		t.Errorf("load: %s", e)
	}
	if n := stats.wrong.Load(); n != 0 {
		t.Errorf("%d wrongly answered requests", n)
	}
	if n := stats.lost.Load(); n != 0 {
		t.Errorf("%d lost requests", n)
	}
	if edits < 50 {
		t.Errorf("only %d edits applied, want at least 50", edits)
	}
	if stats.preflights.Load() == 0 || stats.normal.Load() == 0 {
		t.Errorf("the load did not run: %d preflights, %d normal requests", stats.preflights.Load(), stats.normal.Load())
	}
}

// apiError returns the "error" of an admin API error body.
func apiError(t testing.TB, body string) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		t.Errorf("admin API error body %q has no error message", body)
	}
	return e.Error
}

// accountRules reads one account's rules back from the admin API.
func accountRules(t testing.TB, acct string) []policy.Rule {
	t.Helper()
	status, out := adminCall(t, reloadAdmin, "GET", "/id/"+reloadTag+"/accounts/"+acct, nil)
	if status != http.StatusOK {
		t.Fatalf("GET account %s: %d %s", acct, status, out)
	}
	var rules []policy.Rule
	if err := json.Unmarshal([]byte(out), &rules); err != nil {
		t.Fatalf("GET account %s: %v in %s", acct, err, out)
	}
	return rules
}

// TestFleetPullAndPush exercises the fleet example of docs/operating.md: every
// server starts from testdata/fleet/bootstrap.json, which pulls
// testdata/fleet/caddy.json from a central endpoint; that config pulls
// again every load_delay, so a change published centrally reaches every
// server. Pushing the same JSON to each admin endpoint (POST /load)
// applies it at once.
func TestFleetPullAndPush(t *testing.T) {
	bootstrap, err := os.ReadFile("testdata/fleet/bootstrap.json")
	if err != nil {
		t.Fatal(err)
	}
	v1, err := os.ReadFile("testdata/fleet/caddy.json")
	if err != nil {
		t.Fatal(err)
	}

	// The central endpoint: serves whatever config is published.
	var mu sync.Mutex
	published := v1
	var pulls atomic.Int64
	publish := func(cfg []byte) { mu.Lock(); published = cfg; mu.Unlock() }
	ln, err := net.Listen("tcp", fleetCentralAddr)
	if err != nil {
		t.Fatal(err)
	}
	central := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/caddy.json" {
			http.NotFound(w, r)
			return
		}
		pulls.Add(1)
		mu.Lock()
		cfg := published
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(cfg)
	}))
	central.Listener.Close()
	central.Listener = ln
	central.Start()
	t.Cleanup(central.Close)

	startCaddy(t, "json", string(bootstrap))

	const body = "api response"
	c := newProbeClient()
	v1Probes := []probe{
		preflightProbe(fleetAPI, "account-123456", "https://mydomain.com", "DELETE", "GET, POST, DELETE"),
		preflightProbe(fleetAPI, "account-123456", "http://localhost:8080", "GET", "GET"),
		preflightProbe(fleetAPI, "account-123456", "http://localhost:8080", "POST", ""),
		preflightProbe(fleetAPI, "account-987654", "https://app.example.org:8443", "POST", "GET, POST, DELETE"),
		preflightProbe(fleetAPI, "account-123456", "https://evil.example", "GET", ""),
		normalProbe(fleetAPI, "account-123456", "https://mydomain.com", true, body),
	}
	// Bootstrap applies the pulled config in the background: wait for it.
	waitFor(t, "the pulled config", func() error { return send(c, v1Probes[0]).err })
	for _, p := range v1Probes {
		if r := send(c, p); r.err != nil {
			t.Errorf("pulled config: %v", r.err)
		}
	}

	// Publish a change centrally: the server pulls it within load_delay.
	v2 := withAccount(t, v1, "account-555", []policy.Rule{{Origin: "https://new.example", Methods: []string{"GET"}}})
	publish(v2)
	newProbe := preflightProbe(fleetAPI, "account-555", "https://new.example", "GET", "GET")
	waitFor(t, "the centrally published change", func() error { return send(c, newProbe).err })
	for _, p := range v1Probes {
		if r := send(c, p); r.err != nil {
			t.Errorf("after the central change: %v", r.err)
		}
	}

	// Push: publish v3 centrally and POST it to the admin endpoint, as
	// one would to each server of the fleet; it holds at once.
	v3 := withAccount(t, v2, "account-987654", nil)
	publish(v3)
	status, out := adminCall(t, reloadAdmin, "POST", "/load", v3)
	if status != http.StatusOK {
		t.Fatalf("POST /load: %d %s", status, out)
	}
	for _, p := range []probe{
		newProbe,
		preflightProbe(fleetAPI, "account-987654", "https://app.example.org:8443", "POST", ""),
		v1Probes[0],
	} {
		if r := send(c, p); r.err != nil {
			t.Errorf("after the push: %v", r.err)
		}
	}
	t.Logf("fleet: central endpoint served %d pulls", pulls.Load())
}

// withAccount returns the fleet config cfg with account acct set to
// rules, or removed when rules is nil.
func withAccount(t testing.TB, cfg []byte, acct string, rules []policy.Rule) []byte {
	t.Helper()
	var c map[string]any
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatal(err)
	}
	h := c["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["api"].(map[string]any)["routes"].([]any)[0].(map[string]any)["handle"].([]any)[0].(map[string]any)
	accounts := h["accounts"].(map[string]any)
	if rules == nil {
		delete(accounts, acct)
	} else {
		accounts[acct] = rules
	}
	out, err := json.MarshalIndent(c, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitFor polls check until it succeeds, a bounded number of times.
func waitFor(t testing.TB, what string, check func() error) {
	t.Helper()
	if err := testkit.Until(10*time.Second, 100*time.Millisecond, check); err != nil {
		t.Fatalf("%s never took effect: %v", what, err)
	}
}
