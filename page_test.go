package atomspherecors

// The CORS page (docs/page.md) against a real Caddy in this process:
// basic_auth users named by account, the page under handle_path next to
// an atomsphere_cors handler of the same store, every route, the
// cross-site and size limits, If-Match, history, the audit log, and the
// admin routes' ETag. Ports: admin 127.0.0.1:2940, HTTP 127.0.0.1:9810.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"atomspherecors/internal/rulestore"
	"atomspherecors/internal/testkit"
)

const (
	pageAdmin = "http://127.0.0.1:2940"
	pageSite  = "http://127.0.0.1:9810"
	pageBase  = pageSite + "/settings/cors"
	// demoHash is basic_auth's bcrypt hash of the password "demo", for
	// every user of these tests.
	demoHash = "$2a$10$EjKxOMqe6BWunYrjzSUfFeh46V5YrY0UFA06zS7aJ1CJCZOgwFzIO"
)

// startPageCaddy runs the page's test site and returns its audit log
// file. The store polls once an hour: whatever the handler serves right
// after a page's write, it has from the store it shares with the page.
func startPageCaddy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "audit.log")
	store := `store pt {
			poll_interval 1h
		}`
	startCaddy(t, "caddyfile", fmt.Sprintf(`{
	admin 127.0.0.1:2940
	storage file_system %s
	log audit {
		output file %s
		format json
		level DEBUG
		include http.handlers.atomsphere_cors_page admin.api.atomsphere_cors
	}
}

http://127.0.0.1:9810 {
	bind 127.0.0.1
	atomsphere_cors {
		%s
	}
	handle_path /settings/cors/* {
		basic_auth {
			acct-a %s
			acct-b %s
			bad/id %s
			acct-c. %s
		}
		atomsphere_cors_page {
			%s
			account {http.auth.user.id}
			max_rules 3
		}
	}
	handle_path /open/* {
		atomsphere_cors_page {
			%s
			account {http.auth.user.id}
		}
	}
	respond "api" 200
}
`, filepath.Join(dir, "storage"), logFile, store, demoHash, demoHash, demoHash, demoHash, store, store))
	return logFile
}

// pageCall sends one request to the page as user (none when ""), with
// headers and a body, and returns the response and its body.
func pageCall(t testing.TB, method, url, user string, hdr http.Header, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	if user != "" {
		req.SetBasicAuth(user, "demo")
	}
	res, err := testkit.Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

var jsonCT = http.Header{"Content-Type": {"application/json"}}

func withHeaders(h http.Header, kv ...string) http.Header {
	out := h.Clone()
	for i := 0; i+1 < len(kv); i += 2 {
		out[http.CanonicalHeaderKey(kv[i])] = []string{kv[i+1]}
	}
	return out
}

// getPageRules reads an account's rules through its page.
func getPageRules(t testing.TB, user string) (pageRules, string) {
	t.Helper()
	res, body := pageCall(t, "GET", pageBase+"/rules", user, nil, "")
	if res.StatusCode != 200 {
		t.Fatalf("GET /rules as %s: %d %s", user, res.StatusCode, body)
	}
	var pr pageRules
	if err := json.Unmarshal([]byte(body), &pr); err != nil {
		t.Fatalf("GET /rules as %s: %v: %s", user, err, body)
	}
	return pr, res.Header.Get("ETag")
}

// preflightAllowed sends the preflight a browser on origin sends for
// method to account's API on the test site.
func preflightAllowed(t testing.TB, account, origin, method string) bool {
	t.Helper()
	res, _ := doRequest(t, "OPTIONS", pageSite+"/api/rest/v1/"+account+"/Atom", http.Header{
		"Origin": {origin}, "Access-Control-Request-Method": {method},
	})
	return res.StatusCode == 204 && res.Header.Get("Access-Control-Allow-Origin") == origin
}

func TestPageRoutes(t *testing.T) {
	logFile := startPageCaddy(t)

	t.Run("the page: HTML, its own script and style, strict security headers, no inline script", func(t *testing.T) {
		res, body := pageCall(t, "GET", pageBase+"/", "acct-a", nil, "")
		if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("GET /: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
		}
		csp := res.Header.Get("Content-Security-Policy")
		for _, want := range []string{"frame-ancestors 'none'", "script-src 'self'", "default-src 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("Content-Security-Policy %q allows inline script or eval", csp)
		}
		if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("X-Content-Type-Options %q, want nosniff", got)
		}
		if got := res.Header.Get("Cache-Control"); got != "no-store" {
			t.Errorf("Cache-Control %q, want no-store", got)
		}
		if m := regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>`).FindAllString(body, -1); len(m) != 1 || !strings.Contains(m[0], `src="page.js"`) {
			t.Errorf("script elements %q, want exactly one, page.js", m)
		}
		if m := regexp.MustCompile(`(?i)\son[a-z]+\s*=|\sstyle\s*=|<style|(?:src|href)\s*=\s*"(?:https?:)?//`).FindAllString(body, -1); len(m) > 0 {
			t.Errorf("the page has inline handlers, inline style or outside URLs: %q", m)
		}
		for path, ctype := range map[string]string{"/page.js": "text/javascript", "/page.css": "text/css"} {
			res, body := pageCall(t, "GET", pageBase+path, "acct-a", nil, "")
			if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), ctype) || len(body) < 100 {
				t.Errorf("GET %s: %d %q, %d bytes", path, res.StatusCode, res.Header.Get("Content-Type"), len(body))
			}
			if res.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("GET %s: no nosniff", path)
			}
		}
		_, script := pageCall(t, "GET", pageBase+"/page.js", "acct-a", nil, "")
		if m := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(`).FindAllString(script, -1); len(m) > 0 {
			t.Errorf("page.js writes HTML: %q", m)
		}
	})

	t.Run("GET /rules of an account without rules: [] with an ETag, no-store", func(t *testing.T) {
		res, body := pageCall(t, "GET", pageBase+"/rules", "acct-a", nil, "")
		if res.StatusCode != 200 || strings.TrimSpace(body) != `{"account":"acct-a","rules":[]}` {
			t.Fatalf("GET /rules: %d %s", res.StatusCode, body)
		}
		if res.Header.Get("ETag") == "" || res.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("headers %v: want an ETag and Cache-Control: no-store", res.Header)
		}
	})

	var etag string
	t.Run("PUT /rules: stored, served by the handler at once, the body of GET and a new ETag", func(t *testing.T) {
		_, before := getPageRules(t, "acct-a")
		if preflightAllowed(t, "acct-a", "https://app.example.com", "DELETE") {
			t.Fatal("allowed before the write")
		}
		res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-a", withHeaders(jsonCT, "If-Match", before),
			`[{"origin":"HTTPS://App.Example.com:443","methods":["get","DELETE"]}]`)
		if res.StatusCode != 200 || strings.TrimSpace(body) != `{"account":"acct-a","rules":[{"origin":"https://app.example.com","methods":["GET","DELETE"]}]}` {
			t.Fatalf("PUT: %d %s", res.StatusCode, body)
		}
		etag = res.Header.Get("ETag")
		if etag == "" || etag == before {
			t.Errorf("ETag after the write %q, before %q: want a new one", etag, before)
		}
		if _, now := getPageRules(t, "acct-a"); now != etag {
			t.Errorf("GET's ETag %q, PUT's %q", now, etag)
		}
		if !preflightAllowed(t, "acct-a", "https://app.example.com", "DELETE") {
			t.Error("the handler does not serve the page's write (with a 1h poll: it does not share the page's store)")
		}
		if preflightAllowed(t, "acct-a", "https://app.example.com", "POST") {
			t.Error("POST allowed, not saved")
		}
	})

	t.Run("PUT with a stale If-Match: 412, nothing changed", func(t *testing.T) {
		res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-a", withHeaders(jsonCT, "If-Match", `"stale"`),
			`[{"origin":"https://evil.example"}]`)
		if res.StatusCode != 412 || !strings.Contains(body, "These rules were changed somewhere else") || !strings.Contains(body, "Nothing was saved") {
			t.Fatalf("PUT with a stale If-Match: %d %s", res.StatusCode, body)
		}
		if pr, now := getPageRules(t, "acct-a"); now != etag || len(pr.Rules) != 1 || pr.Rules[0].Origin != "https://app.example.com" {
			t.Errorf("after the 412: %+v %s", pr, now)
		}
		if preflightAllowed(t, "acct-a", "https://evil.example", "GET") {
			t.Error("the refused write is served")
		}
		// A weak tag never matches (RFC 9110 §13.1.1, strong comparison).
		res, _ = pageCall(t, "PUT", pageBase+"/rules", "acct-a", withHeaders(jsonCT, "If-Match", "W/"+etag), `[]`)
		if res.StatusCode != 412 {
			t.Errorf("PUT with a weak If-Match: %d, want 412", res.StatusCode)
		}
	})

	t.Run("PUT refusals: nothing changed", func(t *testing.T) {
		for _, tc := range []struct {
			desc       string
			hdr        http.Header
			body       string
			wantStatus int
			wantBody   []string
		}{
			{"an invalid origin: 400 naming the rule and the origin, with its rule for the page", jsonCT,
				`[{"origin":"https://ok.example"},{"origin":"ftp://b.example","methods":["GET"]}]`, 400,
				[]string{`account \"acct-a\", rule 2 (origin \"ftp://b.example\"): scheme \"ftp\" is not http or https`, `"rule":2`, `"origin":"ftp://b.example"`}},
			{"a method that cannot be allowed: 400", jsonCT, `[{"origin":"https://ok.example","methods":["TRACE"]}]`, 400,
				[]string{`rule 1 (origin \"https://ok.example\"): method \"TRACE\" cannot be allowed`}},
			{"more rules than max_rules (3): 400", jsonCT,
				`[{"origin":"https://a.example"},{"origin":"https://b.example"},{"origin":"https://c.example"},{"origin":"https://d.example"}]`, 400,
				[]string{"4 rules, at most 3"}},
			{"not an array: 400", jsonCT, `{"account":"acct-b","rules":[]}`, 400, []string{"not a JSON array of rules"}},
			{"null: 400", jsonCT, `null`, 400, []string{"null"}},
			{"an unknown field: 400", jsonCT, `[{"origin":"https://a.example","account":"acct-b"}]`, 400, []string{"unknown field"}},
			{"no Content-Type: 415", nil, `[]`, 415, []string{"Content-Type: application/json"}},
			{"text/plain, as a cross-site form would send: 415", http.Header{"Content-Type": {"text/plain"}}, `[]`, 415, nil},
			{"a body over 64 KB: 413", jsonCT, `[{"origin":"https://a.example","methods":["GET"` + strings.Repeat(`,"GET"`, 11000) + `]}]`, 413,
				[]string{"body over 65536 bytes"}},
			{"Origin of another site: 403", withHeaders(jsonCT, "Origin", "https://evil.example"), `[]`, 403,
				[]string{"cross-site write refused", "evil.example"}},
			{"Origin null (a sandboxed frame): 403", withHeaders(jsonCT, "Origin", "null"), `[]`, 403, nil},
			{"Origin of another port of the page's host: 403", withHeaders(jsonCT, "Origin", "http://127.0.0.1:9811"), `[]`, 403, nil},
			{"Origin of the page but Sec-Fetch-Site cross-site: 403", withHeaders(jsonCT, "Origin", pageSite, "Sec-Fetch-Site", "cross-site"), `[]`, 403,
				[]string{"Sec-Fetch-Site"}},
			{"Sec-Fetch-Site same-site (a sibling subdomain): 403", withHeaders(jsonCT, "Sec-Fetch-Site", "same-site"), `[]`, 403, nil},
			{"two Origin lines, the page's and another: 403", http.Header{"Content-Type": {"application/json"}, "Origin": {pageSite, "https://evil.example"}}, `[]`, 403, nil},
			{"the https Origin of the page's host, claimed by an untrusted X-Forwarded-Proto: 403",
				withHeaders(jsonCT, "Origin", "https://127.0.0.1:9810", "X-Forwarded-Proto", "https"), `[]`, 403, nil},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-a", tc.hdr, tc.body)
				if res.StatusCode != tc.wantStatus {
					t.Fatalf("%d %s, want %d", res.StatusCode, body, tc.wantStatus)
				}
				for _, w := range tc.wantBody {
					if !strings.Contains(body, w) {
						t.Errorf("body %s lacks %s", body, w)
					}
				}
				if _, now := getPageRules(t, "acct-a"); now != etag {
					t.Errorf("the rules changed (ETag %s, was %s)", now, etag)
				}
			})
		}
	})

	t.Run("PUT from the page itself (Origin and Sec-Fetch-Site same-origin) and from curl (neither): 200", func(t *testing.T) {
		for _, hdr := range []http.Header{
			withHeaders(jsonCT, "Origin", pageSite, "Sec-Fetch-Site", "same-origin"),
			withHeaders(jsonCT, "Sec-Fetch-Site", "none"),
			withHeaders(jsonCT, "Content-Type", "application/json; charset=utf-8"),
		} {
			res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-a", hdr, `[{"origin":"https://app.example.com","methods":["GET","DELETE"]}]`)
			if res.StatusCode != 200 {
				t.Errorf("PUT with %v: %d %s", hdr, res.StatusCode, body)
			}
		}
	})

	t.Run("GET /check: decided as the handler decides requests", func(t *testing.T) {
		for _, tc := range []struct{ query, want string }{
			{"origin=https://app.example.com&method=DELETE", `{"account":"acct-a","allowed":true,"reason":"the rule for https://app.example.com allows GET, DELETE"}`},
			{"origin=https://APP.example.com:443&method=delete", `{"account":"acct-a","allowed":true,"reason":"the rule for https://app.example.com allows GET, DELETE"}`},
			{"origin=https://app.example.com&method=POST", `{"account":"acct-a","allowed":false,"reason":"method not allowed"}`},
			{"origin=https://other.example&method=GET", `{"account":"acct-a","allowed":false,"reason":"origin not allowed"}`},
			{"origin=https://a%20b.example&method=GET", `{"account":"acct-a","allowed":false,"reason":"malformed Origin header","hint":"This is not an origin a browser sends. This is not a valid web address: write the origin as your browser's address bar shows it, such as https://app.example.com."}`},
			// Each parameter is a header line, as the API reads them: two
			// origins are two Origin lines (refused), a value is trimmed of
			// the spaces and tabs a server trims from a field value.
			{"origin=https://app.example.com&origin=https://evil.example&method=GET", `{"account":"acct-a","allowed":false,"reason":"repeated Origin header"}`},
			{"origin=https://app.example.com&method=GET&method=GET", `{"account":"acct-a","allowed":false,"reason":"repeated Access-Control-Request-Method header"}`},
			{"origin=https://app.example.com%20&method=%09GET", `{"account":"acct-a","allowed":true,"reason":"the rule for https://app.example.com allows GET, DELETE"}`},
		} {
			res, body := pageCall(t, "GET", pageBase+"/check?"+tc.query, "acct-a", nil, "")
			if res.StatusCode != 200 || strings.TrimSpace(body) != tc.want {
				t.Errorf("/check?%s: %d %s, want %s", tc.query, res.StatusCode, body, tc.want)
			}
		}
		res, body := pageCall(t, "GET", pageBase+"/check?origin=https://app.example.com&method=GET", "acct-b", nil, "")
		if res.StatusCode != 200 || !strings.Contains(body, `"reason":"account has no rules"`) {
			t.Errorf("/check as acct-b: %d %s, want acct-b's own answer", res.StatusCode, body)
		}
		if res, _ := pageCall(t, "GET", pageBase+"/check?origin=https://app.example.com", "acct-a", nil, ""); res.StatusCode != 400 {
			t.Errorf("/check without a method: %d, want 400", res.StatusCode)
		}
		for _, origin := range []string{"https://app.example.com ", "\thttps://app.example.com"} {
			res, _ := doRequest(t, "OPTIONS", pageSite+"/api/rest/v1/acct-a/Atom", http.Header{
				"Origin": {origin}, "Access-Control-Request-Method": {"GET"}})
			if res.StatusCode != 204 {
				t.Errorf("preflight with Origin %q: %d, but /check allows it", origin, res.StatusCode)
			}
		}
		// An account whose path the path guard refuses ("acct-c.": a
		// trimming backend reads acct-c) is refused by the API whatever
		// its rules: /check says so rather than "allowed".
		if res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-c.", jsonCT, `[{"origin":"https://app.example.com","methods":["GET"]}]`); res.StatusCode != 200 {
			t.Fatalf("PUT as acct-c.: %d %s", res.StatusCode, body)
		}
		res, body = pageCall(t, "GET", pageBase+"/check?origin=https://app.example.com&method=GET", "acct-c.", nil, "")
		if res.StatusCode != 200 || !strings.Contains(body, `"allowed":false`) || !strings.Contains(body, "refuses every request for this account ID") {
			t.Errorf("/check as acct-c.: %d %s, want refused as the API refuses it", res.StatusCode, body)
		}
		if res, _ := doRequest(t, "OPTIONS", pageSite+"/api/rest/v1/acct-c./Atom", http.Header{
			"Origin": {"https://app.example.com"}, "Access-Control-Request-Method": {"GET"}}); res.StatusCode != 400 {
			t.Errorf("the API's preflight for acct-c.: %d, want 400 from the path guard", res.StatusCode)
		}
	})

	t.Run("a save of the stored rules writes nothing: no new history entry, the same ETag", func(t *testing.T) {
		rules := `[{"origin":"https://same.example","methods":["GET"]}]`
		if res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-c.", jsonCT, rules); res.StatusCode != 200 {
			t.Fatalf("PUT: %d %s", res.StatusCode, body)
		}
		_, etag := getPageRules(t, "acct-c.")
		history := func() int {
			_, body := pageCall(t, "GET", pageBase+"/history", "acct-c.", nil, "")
			var h rulestore.History
			if err := json.Unmarshal([]byte(body), &h); err != nil {
				t.Fatalf("GET /history: %v: %s", err, body)
			}
			return len(h.Changes)
		}
		before := history()
		for range 3 {
			res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-c.", withHeaders(jsonCT, "If-Match", etag), rules)
			if res.StatusCode != 200 || res.Header.Get("ETag") != etag || !strings.Contains(body, "https://same.example") {
				t.Fatalf("PUT of the same rules: %d ETag %s (was %s) %s", res.StatusCode, res.Header.Get("ETag"), etag, body)
			}
		}
		if after := history(); after != before {
			t.Errorf("history has %d changes after three saves of the stored rules, had %d", after, before)
		}
		// A stale If-Match is still refused, changed or not.
		if res, _ := pageCall(t, "PUT", pageBase+"/rules", "acct-c.", withHeaders(jsonCT, "If-Match", `"stale"`), rules); res.StatusCode != 412 {
			t.Errorf("PUT of the same rules with a stale If-Match: %d, want 412", res.StatusCode)
		}
	})

	t.Run("GET /history: newest first, at least the last 10 changes, by the signed-in user", func(t *testing.T) {
		for i := range 12 {
			body := fmt.Sprintf(`[{"origin":"https://h%d.example","methods":["GET"]}]`, i)
			if res, out := pageCall(t, "PUT", pageBase+"/rules", "acct-a", jsonCT, body); res.StatusCode != 200 {
				t.Fatalf("PUT %d: %d %s", i, res.StatusCode, out)
			}
		}
		res, body := pageCall(t, "GET", pageBase+"/history", "acct-a", nil, "")
		var h rulestore.History
		if err := json.Unmarshal([]byte(body), &h); err != nil || res.StatusCode != 200 {
			t.Fatalf("GET /history: %d %s %v", res.StatusCode, body, err)
		}
		if h.Account != "acct-a" || len(h.Changes) < 10 {
			t.Fatalf("history of %q has %d changes, want acct-a's and at least 10", h.Account, len(h.Changes))
		}
		for i := range 10 {
			c := h.Changes[i]
			want := fmt.Sprintf("https://h%d.example", 11-i)
			if c.By != "acct-a" || len(c.Rules) != 1 || c.Rules[0].Origin != want || c.Time == "" {
				t.Errorf("change %d: %+v, want %s by acct-a", i, c, want)
			}
		}
		_, other := pageCall(t, "GET", pageBase+"/history", "acct-b", nil, "")
		if strings.TrimSpace(other) != `{"account":"acct-b","changes":[]}` {
			t.Errorf("acct-b's history: %s", other)
		}
	})

	t.Run("404 and 405", func(t *testing.T) {
		for _, tc := range []struct {
			method, path string
			want         int
			allow        string
		}{
			{"GET", "/nope", 404, ""},
			{"GET", "/rules/acct-b", 404, ""},
			{"GET", "/index.html", 404, ""},
			{"POST", "/rules", 405, "GET, HEAD, PUT"},
			{"DELETE", "/rules", 405, "GET, HEAD, PUT"},
			{"PUT", "/", 405, "GET, HEAD"},
			{"PUT", "/history", 405, "GET, HEAD"},
			{"OPTIONS", "/rules", 405, "GET, HEAD, PUT"},
		} {
			res, body := pageCall(t, tc.method, pageBase+tc.path, "acct-a", jsonCT, "")
			if res.StatusCode != tc.want || res.Header.Get("Allow") != tc.allow {
				t.Errorf("%s %s: %d Allow %q %s, want %d Allow %q", tc.method, tc.path, res.StatusCode, res.Header.Get("Allow"), body, tc.want, tc.allow)
			}
		}
	})

	t.Run("no account: 403 on every route, nothing written", func(t *testing.T) {
		for _, tc := range []struct{ base, user string }{
			{pageSite + "/open", ""},       // no authentication: the placeholder is unknown
			{pageBase, "bad/id"},           // not an account ID
			{pageSite + "/open", "acct-a"}, // credentials that no handler checked
		} {
			for _, route := range []string{"/", "/rules", "/history", "/check?origin=https://a.example&method=GET", "/nope"} {
				res, body := pageCall(t, "GET", tc.base+route, tc.user, nil, "")
				if res.StatusCode != 403 {
					t.Errorf("GET %s%s as %q: %d %s, want 403", tc.base, route, tc.user, res.StatusCode, body)
				}
			}
			res, body := pageCall(t, "PUT", tc.base+"/rules", tc.user, jsonCT, `[{"origin":"https://x.example"}]`)
			if res.StatusCode != 403 {
				t.Errorf("PUT as %q: %d %s, want 403", tc.user, res.StatusCode, body)
			}
		}
		if res, _ := pageCall(t, "GET", pageBase+"/rules", "", nil, ""); res.StatusCode != 401 {
			t.Errorf("GET /rules without credentials behind basic_auth: %d, want basic_auth's 401", res.StatusCode)
		}
		st, out := storeCall(t, pageAdmin, "GET", "/atomsphere_cors/pt/accounts", "")
		if st != 200 || strings.Contains(out, "bad") || strings.Contains(out, `""`) {
			t.Errorf("accounts after the refused writes: %d %s", st, out)
		}
	})

	t.Run("the audit log: one info entry per write, refused writes at debug", func(t *testing.T) {
		entries := readLog(t, logFile)
		var written, refused []map[string]any
		for _, e := range entries {
			switch e["msg"] {
			case "account rules written":
				written = append(written, e)
			case "account rules write refused":
				refused = append(refused, e)
			}
		}
		first := written[0]
		if first["level"] != "info" || first["account"] != "acct-a" || first["by"] != "acct-a" || !strings.HasPrefix(fmt.Sprint(first["client"]), "127.0.0.1") ||
			fmt.Sprint(first["origins_added"]) != "[https://app.example.com]" || fmt.Sprint(first["origins_removed"]) != "[]" {
			t.Errorf("first write's entry: %v", first)
		}
		last := written[len(written)-1]
		if fmt.Sprint(last["origins_added"]) != "[https://h11.example]" || fmt.Sprint(last["origins_removed"]) != "[https://h10.example]" {
			t.Errorf("last write's entry: %v", last)
		}
		// acct-a's writes: the first, then three saves of those same
		// rules (which write nothing, so log no write), then twelve.
		var ofA int
		for _, e := range written {
			if e["account"] == "acct-a" {
				ofA++
			}
		}
		if ofA != 1+12 {
			t.Errorf("%d write entries for acct-a, want 13 (one per write that changed the rules)", ofA)
		}
		var sawCrossSite, sawStale bool
		for _, e := range refused {
			if e["level"] != "debug" {
				t.Errorf("refused write logged at %v", e["level"])
			}
			sawCrossSite = sawCrossSite || e["status"] == 403.0 && strings.Contains(fmt.Sprint(e["reason"]), "evil.example")
			sawStale = sawStale || e["status"] == 412.0
		}
		if !sawCrossSite || !sawStale {
			t.Errorf("refused entries %v: want the cross-site write and the stale one", refused)
		}
	})
}

// readLog reads a JSON log file, one entry a line (testkit.ReadJSONLog).
func readLog(t *testing.T, path string) []map[string]any {
	t.Helper()
	return testkit.ReadJSONLog(t, path)
}
