package atomspherecors

import (
	"atomspherecors/internal/testkit"
	"bufio"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Observability tests run Caddy on loopback only: in this process with
// the admin API on localhost:2970-2971 and sites on 127.0.0.1:9700-9711,
// and the explain command as a built binary.
const (
	obsAdmin     = "localhost:2970"
	obsAdminLive = "localhost:2971"
	obsAdminNone = "localhost:2979" // nothing listens there
)

// obsIsolate gives Caddy its own config and data directories, and
// returns the storage option that keeps this process's Caddy in them
// (its default storage was fixed when the process started).
func obsIsolate(t *testing.T) string {
	t.Helper()
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	return "storage file_system " + filepath.Join(data, "caddy")
}

// metricLine is one sample of caddy_atomsphere_cors_requests_total.
var metricLine = regexp.MustCompile(`^caddy_atomsphere_cors_requests_total\{kind="([^"]*)",outcome="([^"]*)",reason="([^"]*)"\} (\S+)$`)

// scrapeDecisions reads the decision counters from Caddy's admin
// /metrics, by "kind/outcome/reason".
func scrapeDecisions(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	res, body := doRequest(t, "GET", "http://"+admin+"/metrics", nil)
	if res.StatusCode != 200 {
		t.Fatalf("GET /metrics: status %d: %s", res.StatusCode, body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		m := metricLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[4], 64)
		if err != nil {
			t.Fatalf("metric %q: %v", sc.Text(), err)
		}
		out[m[1]+"/"+m[2]+"/"+m[3]] = v
	}
	if !strings.Contains(body, "# TYPE caddy_atomsphere_cors_requests_total counter") {
		t.Fatalf("no caddy_atomsphere_cors_requests_total on /metrics")
	}
	return out
}

// obsRequest is one request of the mix, with the decision it should
// count and log.
type obsRequest struct {
	method, path string
	hdr          [][2]string // header lines, in order
	series       string      // kind/outcome/reason, "" when not counted
	account      string
}

// TestMetricsAndAccessLog sends a known mix of requests to a real Caddy
// with an access log in a file, then checks the counters on its admin
// /metrics (exact deltas) and the atomsphere_cors object of every access
// log entry (docs/operating.md, "Metrics" and "Access log").
func TestMetricsAndAccessLog(t *testing.T) {
	storage := obsIsolate(t)
	logFile := filepath.Join(t.TempDir(), "access.log")
	startCaddy(t, "caddyfile", `{
	admin `+obsAdmin+`
	`+storage+`
	persist_config off
	default_bind 127.0.0.1
	http_port 9799
}

http://127.0.0.1:9700 {
	log {
		output file `+logFile+`
		format json
	}
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET POST
		}
	}
	respond "api" 200
}
`)
	before := scrapeDecisions(t, obsAdmin)

	const a = "/api/rest/v1/account-123456/Atom"
	my := [2]string{"Origin", "https://mydomain.com"}
	acrm := func(m string) [2]string { return [2]string{"Access-Control-Request-Method", m} }
	mix := []obsRequest{
		{"OPTIONS", a, [][2]string{my, acrm("GET")}, "preflight/allowed/", "account-123456"},
		{"OPTIONS", a, [][2]string{my, acrm("POST")}, "preflight/allowed/", "account-123456"},
		{"OPTIONS", a, [][2]string{my, acrm("DELETE")}, "preflight/denied/method not allowed", "account-123456"},
		{"OPTIONS", a, [][2]string{{"Origin", "https://evil.example"}, acrm("GET")}, "preflight/denied/origin not allowed", "account-123456"},
		{"OPTIONS", a, [][2]string{my, my, acrm("GET")}, "preflight/denied/repeated Origin header", "account-123456"},
		{"OPTIONS", a, [][2]string{my, acrm("GET"), acrm("GET")}, "preflight/denied/repeated Access-Control-Request-Method header", "account-123456"},
		{"OPTIONS", "/api/rest/v1/account-none/x", [][2]string{my, acrm("GET")}, "preflight/denied/account has no rules", "account-none"},
		{"OPTIONS", a, [][2]string{{"Origin", "https://mydomain.com/?"}, acrm("GET")}, "preflight/denied/malformed Origin header", "account-123456"},
		{"OPTIONS", "/api/rest/v1/account-123456/x%5c..%5c..%5caccount-987654/x", [][2]string{my, acrm("GET")}, "preflight/denied/ambiguous path", "account-123456"},
		{"GET", a, [][2]string{my}, "normal/allowed/", "account-123456"},
		{"GET", "/API/Rest/V1/account-123456/Atom", [][2]string{my}, "normal/allowed/", "account-123456"},
		{"POST", a, [][2]string{my}, "normal/allowed/", "account-123456"},
		{"GET", a, nil, "normal/denied/no Origin header", "account-123456"},
		{"DELETE", a, [][2]string{my}, "normal/denied/method not allowed", "account-123456"},
		{"GET", a, [][2]string{my, my}, "normal/denied/repeated Origin header", "account-123456"},
		{"GET", "/api/rest/v1/account-123456/..;/account-987654/x", [][2]string{my}, "normal/denied/ambiguous path", "account-123456"},
		{"GET", "/", [][2]string{my}, "", ""},
		{"OPTIONS", "/other/account-123456", [][2]string{my, acrm("GET")}, "", ""},
	}
	for i, q := range mix {
		rawRequest(t, "127.0.0.1:9700", q.method, q.path+"?n="+strconv.Itoa(i), q.hdr)
	}

	after := scrapeDecisions(t, obsAdmin)
	want := maps.Clone(before)
	for _, q := range mix {
		if q.series != "" {
			want[q.series]++
		}
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if after[k] != want[k] {
			t.Errorf("%s: %v, want %v (before the mix: %v)", k, after[k], want[k], before[k])
		}
	}
	// The series are the fixed set, all there from the start, and carry
	// no account or origin.
	var fixed []string
	for _, kind := range []string{"preflight", "normal"} {
		fixed = append(fixed, kind+"/allowed/")
		for _, r := range deniedReasons {
			if kind == "preflight" && r.preflight || kind == "normal" && r.normal {
				fixed = append(fixed, kind+"/denied/"+r.reason.String())
			}
		}
		fixed = append(fixed, kind+"/denied/"+reasonOther)
	}
	slices.Sort(fixed)
	if got := slices.Sorted(maps.Keys(after)); !slices.Equal(got, fixed) {
		t.Errorf("series:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(fixed, "\n"))
	}
	if got := slices.Sorted(maps.Keys(before)); !slices.Equal(got, fixed) {
		t.Errorf("series before any request:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(fixed, "\n"))
	}

	// The access log: one entry per request, each account-path entry
	// with its decision, the others without.
	entries := readAccessLog(t, logFile, len(mix))
	for i, q := range mix {
		e, ok := entries["n="+strconv.Itoa(i)]
		if !ok {
			t.Errorf("%s %s: no access log entry", q.method, q.path)
			continue
		}
		got, has := e["atomsphere_cors"]
		if q.series == "" {
			if has {
				t.Errorf("%s %s: access log has atomsphere_cors %v, want none", q.method, q.path, got)
			}
			continue
		}
		parts := strings.SplitN(q.series, "/", 3)
		want := map[string]any{"account": q.account, "outcome": parts[1]}
		if parts[2] != "" {
			want["reason"] = parts[2]
		}
		if r, ok := guardReadingOf[q.path]; ok {
			want["reading"] = r
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s %s %v: access log atomsphere_cors %v, want %v", q.method, q.path, q.hdr, got, want)
		}
	}
}

// guardReadingOf is the backend reading a path guard refusal of the mix
// names: the first of the guard's readings that names another account.
var guardReadingOf = map[string]string{
	"/api/rest/v1/account-123456/x%5c..%5c..%5caccount-987654/x": "backslash read as a separator",
	"/api/rest/v1/account-123456/..;/account-987654/x":           "path parameters stripped, then decoded (Tomcat and other servlet containers)",
}

// readAccessLog waits (bounded) for n entries in a JSON access log and
// returns them by the query string of their URI.
func readAccessLog(t *testing.T, file string, n int) map[string]map[string]any {
	t.Helper()
	var entries map[string]map[string]any
	for attempt := 0; attempt < 100; attempt++ {
		entries = map[string]map[string]any{}
		for _, e := range testkit.ReadJSONLog(t, file) {
			req, _ := e["request"].(map[string]any)
			uri, _ := req["uri"].(string)
			if _, q, ok := strings.Cut(uri, "?"); ok {
				entries[q] = e
			}
		}
		if len(entries) >= n {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return entries
}
