package atomspherecors

// The CORS page's guarantees beyond its routes (page_test.go), against
// the same real Caddy: one tenant cannot reach another's rules, the admin
// routes' ETag, configs refused, the directive's order, racing If-Match
// writes, the page under an API prefix and without CORS headers.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"atomspherecors/internal/rulestore"
	"atomspherecors/internal/testkit"
)

// A tenant cannot read or change another tenant's rules, whatever the
// URL, query, headers or body say: the account is the signed-in user's.
func TestPageTenantIsolation(t *testing.T) {
	startPageCaddy(t)
	if st, out := storeCall(t, pageAdmin, "PUT", "/atomsphere_cors/pt/accounts/acct-b", `[{"origin":"https://b.example","methods":["GET"]}]`); st != 201 {
		t.Fatalf("admin PUT acct-b: %d %s", st, out)
	}
	_, bTag := getPageRules(t, "acct-b")
	for _, path := range []string{
		"/rules?account=acct-b", "/rules?account=acct-b&user=acct-b", "/../acct-b/rules", "/%2e%2e/rules",
		"/rules/../rules?acct-b", "//rules", "/RULES", "/history?account=acct-b",
	} {
		res, body := pageCall(t, "GET", pageBase+path, "acct-a", http.Header{"X-Account": {"acct-b"}, "X-Forwarded-User": {"acct-b"}}, "")
		if strings.Contains(body, "b.example") || strings.Contains(body, `"acct-b"`) {
			t.Errorf("GET %s as acct-a: %d %s: acct-b's rules", path, res.StatusCode, body)
		}
	}
	for _, path := range []string{"/rules?account=acct-b", "/../acct-b/rules"} {
		pageCall(t, "PUT", pageBase+path, "acct-a", withHeaders(jsonCT, "X-Account", "acct-b"), `[{"origin":"https://a-wrote-this.example"}]`)
	}
	if pr, tag := getPageRules(t, "acct-b"); tag != bTag || len(pr.Rules) != 1 || pr.Rules[0].Origin != "https://b.example" {
		t.Errorf("acct-b's rules after acct-a's writes: %+v", pr)
	}
	// acct-b's ETag is no key to acct-b's account for acct-a.
	res, _ := pageCall(t, "PUT", pageBase+"/rules", "acct-a", withHeaders(jsonCT, "If-Match", bTag), `[{"origin":"https://x.example"}]`)
	if res.StatusCode != 412 {
		t.Errorf("acct-a's PUT with acct-b's ETag: %d, want 412 (acct-a's rules are not acct-b's)", res.StatusCode)
	}
	if preflightAllowed(t, "acct-b", "https://a-wrote-this.example", "GET") {
		t.Error("acct-a's write is served for acct-b")
	}
	// A wrong password for acct-b is basic_auth's 401, not acct-b's page.
	req, _ := http.NewRequest("GET", pageBase+"/rules", nil)
	req.SetBasicAuth("acct-b", "wrong")
	r2, err := testkit.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != 401 {
		t.Errorf("acct-b with a wrong password: %d, want 401", r2.StatusCode)
	}
}

// The admin routes: GET of one account sends its ETag, the same the page
// sends for it; PUT and DELETE honour If-Match (RFC 9110 §13.1.1); and
// writes are logged as the page's are, and kept in the history.
func TestPageAdminRoutesETag(t *testing.T) {
	logFile := startPageCaddy(t)
	a := pageAdmin + "/atomsphere_cors/pt/accounts/acct-b"
	call := func(method, ifMatch, body string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, a, strings.NewReader(body))
		if ifMatch != "" {
			req.Header.Set("If-Match", ifMatch)
		}
		res, err := adminClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	if res, body := call("PUT", "*", `[{"origin":"https://e.example"}]`); res.StatusCode != 412 {
		t.Errorf("PUT If-Match * of an account that does not exist: %d %s, want 412", res.StatusCode, body)
	}
	res, body := call("PUT", "", `[{"origin":"https://e.example"}]`)
	if res.StatusCode != 201 || res.Header.Get("ETag") == "" {
		t.Fatalf("PUT: %d %s %v", res.StatusCode, body, res.Header)
	}
	res, _ = call("GET", "", "")
	tag := res.Header.Get("ETag")
	if tag == "" {
		t.Fatal("GET of one account sends no ETag")
	}
	if _, pageTag := getPageRules(t, "acct-b"); pageTag != tag {
		t.Errorf("the page's ETag %s, the admin route's %s: want one tag per version", pageTag, tag)
	}
	if res, body := call("PUT", `"stale"`, `[{"origin":"https://f.example"}]`); res.StatusCode != 412 {
		t.Errorf("PUT with a stale If-Match: %d %s, want 412", res.StatusCode, body)
	}
	if res, body := call("PUT", `"x", `+tag, `[{"origin":"https://f.example"}]`); res.StatusCode != 200 {
		t.Errorf("PUT with the current ETag in a list: %d %s, want 200", res.StatusCode, body)
	}
	// A PUT of the stored rules, in any spelling, writes nothing: no
	// audit entry, no history entry (both counted below), the same ETag.
	res, _ = call("GET", "", "")
	current := res.Header.Get("ETag")
	for range 2 {
		res, body := call("PUT", "", `[{"origin":"HTTPS://F.example:443","methods":["get","post","delete"]}]`)
		if res.StatusCode != 200 || res.Header.Get("ETag") != current {
			t.Errorf("PUT of the stored rules: %d ETag %s (was %s) %s", res.StatusCode, res.Header.Get("ETag"), current, body)
		}
	}
	if res, _ := call("DELETE", tag, ""); res.StatusCode != 412 {
		t.Errorf("DELETE with the ETag before the PUT: %d, want 412", res.StatusCode)
	}
	res, _ = call("GET", "", "")
	if res, body := call("DELETE", res.Header.Get("ETag"), ""); res.StatusCode != 204 {
		t.Errorf("DELETE with the current ETag: %d %s", res.StatusCode, body)
	}

	var writes []map[string]any
	for _, e := range readLog(t, logFile) {
		if e["msg"] == "account rules written" && e["logger"] == "admin.api.atomsphere_cors" {
			writes = append(writes, e)
		}
	}
	if len(writes) != 3 || writes[0]["by"] != adminBy || fmt.Sprint(writes[1]["origins_added"]) != "[https://f.example]" ||
		fmt.Sprint(writes[1]["origins_removed"]) != "[https://e.example]" || fmt.Sprint(writes[2]["origins_removed"]) != "[https://f.example]" {
		t.Errorf("admin write entries: %v", writes)
	}
	_, hist := pageCall(t, "GET", pageBase+"/history", "acct-b", nil, "")
	var h rulestore.History
	_ = json.Unmarshal([]byte(hist), &h)
	if len(h.Changes) != 3 || h.Changes[0].By != adminBy || len(h.Changes[0].Rules) != 0 || h.Changes[1].Rules[0].Origin != "https://f.example" {
		t.Errorf("history after the admin writes: %s", hist)
	}
}

// The page's config: store and account required, account a placeholder,
// max_rules positive, in JSON and in a Caddyfile (with file and line).
func TestPageConfigRefused(t *testing.T) {
	for _, tc := range []struct{ desc, cfg, want string }{
		{"no store", `{"account": "{http.auth.user.id}"}`, "store is required"},
		{"no account", `{"store": {"name": "pt"}}`, "account is required"},
		{"an account without a placeholder", `{"store": {"name": "pt"}, "account": "acct-a"}`, `account "acct-a" has no placeholder`},
		{"negative max_rules", `{"store": {"name": "pt"}, "account": "{http.auth.user.id}", "max_rules": -1}`, "max_rules -1 is not positive"},
		{"a bad store name", `{"store": {"name": "a/b"}, "account": "{http.auth.user.id}"}`, `store name "a/b"`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			p := &Page{}
			if err := json.Unmarshal([]byte(tc.cfg), p); err != nil {
				t.Fatal(err)
			}
			if err := p.check(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("check: %v, want %q", err, tc.want)
			}
		})
	}
	for _, tc := range []struct{ desc, cfg, want string }{
		{"no account", "atomsphere_cors_page {\n\tstore pt\n}", "account is required"},
		{"max_rules 0", "atomsphere_cors_page {\n\tstore pt\n\taccount {http.auth.user.id}\n\tmax_rules 0\n}", `max_rules "0" is not a positive number, at Testfile:4`},
		{"repeated account", "atomsphere_cors_page {\n\tstore pt\n\taccount {http.auth.user.id}\n\taccount {http.vars.b}\n}", "account already specified"},
		{"unknown subdirective", "atomsphere_cors_page {\n\tstore pt\n\taccounts {a}\n}", `unrecognized subdirective "accounts"`},
	} {
		t.Run("Caddyfile: "+tc.desc, func(t *testing.T) {
			var p Page
			err := p.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.cfg))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("UnmarshalCaddyfile: %v, want %q", err, tc.want)
			}
		})
	}
	var p Page
	if err := p.UnmarshalCaddyfile(caddyfile.NewTestDispenser("atomsphere_cors_page {\n\tstore pt {\n\t\tpoll_interval 2s\n\t}\n\taccount {http.auth.user.id}\n\tmax_rules 7\n}")); err != nil {
		t.Fatal(err)
	}
	if got := string(mustJSON(p)); got != `{"store":{"name":"pt","poll_interval":2000000000},"account":"{http.auth.user.id}","max_rules":7}` {
		t.Errorf("parsed %s", got)
	}
}

// The directive runs after authentication and request_header, however
// the Caddyfile orders them: a page before forward_auth would read an
// identity header the client chose.
func TestPageDirectiveOrder(t *testing.T) {
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`
http://127.0.0.1:9819 {
	atomsphere_cors_page {
		store pt
		account {http.request.header.X-User}
	}
	request_header X-User-Checked yes
	forward_auth 127.0.0.1:9 {
		uri /auth
		copy_headers X-User
	}
	basic_auth {
		acct-a `+demoHash+`
	}
	respond "never" 200
}
`), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range regexp.MustCompile(`"handler":"([a-z_]+)"`).FindAllStringSubmatch(string(adapted), -1) {
		names = append(names, m[1])
	}
	page := slices.Index(names, "atomsphere_cors_page")
	for _, before := range []string{"authentication", "reverse_proxy", "headers"} {
		if i := slices.Index(names, before); i < 0 || page < i {
			t.Errorf("handlers in order %v: want atomsphere_cors_page after %s", names, before)
		}
	}
	if i := slices.Index(names, "static_response"); page > i {
		t.Errorf("handlers in order %v: want atomsphere_cors_page before respond", names)
	}
}

// Writes racing with one If-Match: the check runs under the store's lock
// against the stored version, so exactly one wins and the others get 412
// (RFC 9110 §13.1.1), whatever this server had read.
func TestPageConcurrentIfMatch(t *testing.T) {
	startPageCaddy(t)
	_, tag := getPageRules(t, "acct-a")
	const n = 8
	statuses := make(chan int, n)
	for i := range n {
		go func() {
			res, _ := pageCall(t, "PUT", pageBase+"/rules", "acct-a", withHeaders(jsonCT, "If-Match", tag),
				fmt.Sprintf(`[{"origin":"https://race-%d.example"}]`, i))
			statuses <- res.StatusCode
		}()
	}
	got := map[int]int{}
	for range n {
		got[<-statuses]++
	}
	if got[200] != 1 || got[412] != n-1 {
		t.Errorf("statuses %v, want one 200 and %d 412", got, n-1)
	}
	_, hist := pageCall(t, "GET", pageBase+"/history", "acct-a", nil, "")
	if c := strings.Count(hist, `"by":"acct-a"`); c != 1 {
		t.Errorf("history has %d changes, want the one write: %s", c, hist)
	}
}

// TestPageUnderAPIPrefix: a CORS page placed under a path prefix of an
// atomsphere_cors handler would get that handler's CORS headers for an
// "account" named by the page's path, letting that account's origins
// read every user's rules; it refuses every request instead. Ports:
// admin 127.0.0.1:2941, HTTP 127.0.0.1:9811.
func TestPageUnderAPIPrefix(t *testing.T) {
	dir := t.TempDir()
	startCaddy(t, "caddyfile", fmt.Sprintf(`{
	admin 127.0.0.1:2941
	storage file_system %s
}

http://127.0.0.1:9811 {
	bind 127.0.0.1
	atomsphere_cors {
		account settings {
			origin http://localhost:9853 GET PUT
		}
	}
	handle_path /api/rest/v1/settings/cors/* {
		basic_auth {
			acct-a %s
		}
		atomsphere_cors_page {
			store under {
				poll_interval 1h
			}
			account {http.auth.user.id}
		}
	}
}
`, filepath.Join(dir, "storage"), demoHash))
	base := "http://127.0.0.1:9811/api/rest/v1/settings/cors"
	for _, route := range []string{"/rules", "/history", "/"} {
		res, body := pageCall(t, "GET", base+route, "acct-a", http.Header{"Origin": {"http://localhost:9853"}}, "")
		if res.StatusCode != 500 || strings.Contains(body, `"account"`) || strings.Contains(body, "<html") {
			t.Errorf("GET %s from an origin the API allows for account settings: %d %s, want 500 and nothing of acct-a's", route, res.StatusCode, body)
		}
	}
}

// TestPageCarriesNoCORSHeaders: the page's answers carry no
// Access-Control-* header, whoever sets it: a site that reflects Origin
// with credentials would let any origin read every user's rules. Header
// operations deferred to the response that touch them make the page
// refuse every request, as does a handler that buffers the page's answer
// to change it (intercept). Ports: admin 127.0.0.1:2942, HTTP
// 127.0.0.1:9812-9814.
func TestPageCarriesNoCORSHeaders(t *testing.T) {
	dir := t.TempDir()
	// The same page in each site, under what the site puts around it.
	page := fmt.Sprintf(`	handle_path /settings/cors/* {
		basic_auth {
			acct-a %s
		}
		atomsphere_cors_page {
			store nocors {
				poll_interval 1h
			}
			account {http.auth.user.id}
		}
	}
`, demoHash)
	startCaddy(t, "caddyfile", fmt.Sprintf(`{
	admin 127.0.0.1:2942
	storage file_system %[1]s
}

http://127.0.0.1:9812 {
	bind 127.0.0.1
	log {
		output discard
	}
	header Access-Control-Allow-Origin {http.request.header.Origin}
	header Access-Control-Allow-Credentials true
%[2]s}

http://127.0.0.1:9814 {
	bind 127.0.0.1
	intercept {
		@any status 2xx 4xx
		handle_response @any {
			header Access-Control-Allow-Origin {http.request.header.Origin}
			header Access-Control-Allow-Credentials true
		}
	}
%[2]s}

http://127.0.0.1:9813 {
	bind 127.0.0.1
	header {
		defer
		Access-Control-Allow-Origin {http.request.header.Origin}
	}
%[2]s}
`, filepath.Join(dir, "storage"), page))
	evil := http.Header{"Origin": {"https://evil.example"}}
	for _, route := range []string{"/rules", "/history", "/"} {
		res, body := pageCall(t, "GET", "http://127.0.0.1:9812/settings/cors"+route, "acct-a", evil, "")
		if res.StatusCode != 200 {
			t.Errorf("GET %s: %d %s", route, res.StatusCode, body)
		}
		if h := corsHeaders(res.Header); len(h) > 0 {
			t.Errorf("GET %s from another origin carries %v", route, h)
		}
		res, body = pageCall(t, "GET", "http://127.0.0.1:9813/settings/cors"+route, "acct-a", evil, "")
		if res.StatusCode != 500 || strings.Contains(body, `"account"`) || len(corsHeaders(res.Header)) > 0 {
			t.Errorf("GET %s under deferred Access-Control-* operations: %d %v %s, want 500 with nothing of acct-a's and no CORS header",
				route, res.StatusCode, corsHeaders(res.Header), body)
		}
		// intercept's handle_response routes set headers after the page
		// has written: the page refuses to answer under them.
		res, body = pageCall(t, "GET", "http://127.0.0.1:9814/settings/cors"+route, "acct-a", evil, "")
		if res.StatusCode != 500 || strings.Contains(body, `"account"`) || strings.Contains(body, "<html") {
			t.Errorf("GET %s under intercept: %d %s, want 500 with nothing of acct-a's", route, res.StatusCode, body)
		}
	}
}
