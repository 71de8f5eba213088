package atomspherecors

// What the CORS page answers a tenant (docs/page.md), against the real
// Caddy of page_test.go: an ETag names the account as well as the rules,
// a save's body is read strictly, refusals are in the tenant's words,
// storage faults give a generic message (the detail goes to the log) and
// say what the history lacks, the account placeholder must be an
// identity, and a person with no account gets a page that says so.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"atomspherecors/internal/rulestore"
	"atomspherecors/internal/testkit"
)

// Two accounts with the same rules (every new account has none) have
// different ETags, so a save made with one account's tag cannot land in
// another: a tab that read acct-a, whose user then signs in as acct-b
// elsewhere, saves into neither (RFC 9110 §8.8.3, §13.1.1).
func TestPageETagNamesTheAccount(t *testing.T) {
	startPageCaddy(t)
	a, aTag := getPageRules(t, "acct-a")
	b, bTag := getPageRules(t, "acct-b")
	if len(a.Rules) != 0 || len(b.Rules) != 0 {
		t.Fatalf("want two new accounts, got %+v and %+v", a, b)
	}
	if aTag == bTag {
		t.Fatalf("acct-a and acct-b, both without rules, have the same ETag %s", aTag)
	}
	res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-b", withHeaders(jsonCT, "If-Match", aTag), `[{"origin":"https://meant-for-a.example","methods":["GET"]}]`)
	if res.StatusCode != 412 || !strings.Contains(body, `"account":"acct-b"`) {
		t.Errorf("PUT as acct-b with acct-a's ETag: %d %s, want 412 naming acct-b (the page shows acct-a: it says so)", res.StatusCode, body)
	}
	if _, body := pageCall(t, "GET", pageBase+"/check?origin=https://x.example&method=GET", "acct-b", nil, ""); !strings.Contains(body, `"account":"acct-b"`) {
		t.Errorf("/check as acct-b: %s, want it to name acct-b", body)
	}
	if preflightAllowed(t, "acct-b", "https://meant-for-a.example", "GET") {
		t.Error("acct-a's edit is served for acct-b")
	}
	if _, now := getPageRules(t, "acct-b"); now != bTag {
		t.Errorf("acct-b's ETag changed from %s to %s", bTag, now)
	}
	// The admin routes' tags are the page's, so they name the account too.
	if st, out := storeCall(t, pageAdmin, "PUT", "/atomsphere_cors/pt/accounts/acct-a", `[{"origin":"https://same.example","methods":["GET"]}]`); st != 201 {
		t.Fatalf("admin PUT acct-a: %d %s", st, out)
	}
	if st, out := storeCall(t, pageAdmin, "PUT", "/atomsphere_cors/pt/accounts/acct-b", `[{"origin":"https://same.example","methods":["GET"]}]`); st != 201 {
		t.Fatalf("admin PUT acct-b: %d %s", st, out)
	}
	_, aTag = getPageRules(t, "acct-a")
	req, _ := http.NewRequest("DELETE", pageAdmin+"/atomsphere_cors/pt/accounts/acct-b", nil)
	req.Header.Set("If-Match", aTag)
	res, err := testkit.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 412 {
		t.Errorf("admin DELETE of acct-b with acct-a's ETag (same rules): %d, want 412", res.StatusCode)
	}
	if !preflightAllowed(t, "acct-b", "https://same.example", "GET") {
		t.Error("acct-b was deleted with acct-a's ETag")
	}
}

// A save's body has exactly the keys "origin" and "methods", each once:
// encoding/json would take "Origin" for "origin" and keep the last of two,
// so a filter in front reading "origin" would see another origin than
// the one stored. "methods": null is refused as [] is; through the page
// and the admin routes alike.
func TestPageStrictBody(t *testing.T) {
	startPageCaddy(t)
	for _, tc := range []struct{ desc, body, want string }{
		{"two spellings of origin", `[{"origin":"https://c.example","Origin":"https://evil.example"}]`, `unknown field \"Origin\"`},
		{"origin upper-cased", `[{"ORIGIN":"https://evil.example"}]`, `unknown field \"ORIGIN\"`},
		{"origin twice", `[{"origin":"https://c.example","origin":"https://evil.example"}]`, `field \"origin\" appears twice`},
		{"methods twice", `[{"origin":"https://c.example","methods":["GET"],"methods":["DELETE"]}]`, `field \"methods\" appears twice`},
		{"methods null", `[{"origin":"https://evil.example","methods":null}]`, `not null`},
		{"no origin", `[{"methods":["GET"]}]`, `\"origin\" is missing`},
		{"origin a number", `[{"origin":1}]`, `must be a string, not a number`},
		{"a second value", `[] []`, `more than one JSON value`},
		{"null", `null`, `not null`},
		{"a huge number", `[{"origin":1e999}]`, `must be a string, not a number`},
		{"a number among methods", `[{"origin":"https://c.example","methods":[1e999]}]`, `a method must be a string, not a number`},
		{"a byte order mark", "\ufeff[]", `byte order mark`},
		{"origin escaped as a duplicate", `[{"origin":"https://c.example","\u006frigin":"https://evil.example"}]`, `field \"origin\" is written with an escape`},
		{"origin escaped alone", `[{"\u006frigin":"https://evil.example"}]`, `field \"origin\" is written with an escape`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-a", jsonCT, tc.body)
			if res.StatusCode != 400 || !strings.Contains(body, tc.want) {
				t.Errorf("page PUT %s: %d %s, want 400 with %s", tc.body, res.StatusCode, body, tc.want)
			}
			st, out := storeCall(t, pageAdmin, "PUT", "/atomsphere_cors/pt/accounts/acct-a", tc.body)
			if st != 400 || !strings.Contains(out, strings.ReplaceAll(tc.want, `\"`, `"`)) && !strings.Contains(out, tc.want) {
				t.Errorf("admin PUT %s: %d %s, want 400 with %s", tc.body, st, out, tc.want)
			}
			if preflightAllowed(t, "acct-a", "https://evil.example", "GET") || preflightAllowed(t, "acct-a", "https://c.example", "DELETE") {
				t.Error("the refused body is served")
			}
		})
	}
	// max_rules counts origins once merged: the same origin four times
	// is one (max_rules is 3 here).
	same := `[{"origin":"https://c.example"},{"origin":"https://c.example"},{"origin":"https://C.example"},{"origin":"https://c.example:443"}]`
	if res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-a", jsonCT, same); res.StatusCode != 200 {
		t.Errorf("PUT of one origin four times: %d %s, want 200", res.StatusCode, body)
	}
	// Without "methods", a rule has GET, POST and DELETE, as documented.
	if res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-a", jsonCT, `[{"origin":"https://c.example"}]`); res.StatusCode != 200 || !strings.Contains(body, `"methods":["GET","POST","DELETE"]`) {
		t.Errorf("PUT without methods: %d %s", res.StatusCode, body)
	}
}

// A refused save says what to write, in the tenant's words, beside the
// field at fault; the operator's message is its detail.
func TestPageRefusalInTenantsWords(t *testing.T) {
	startPageCaddy(t)
	for _, tc := range []struct {
		desc, origin, methods string
		field, want           string
	}{
		{"no scheme", "localhost:9000", `["GET"]`, "origin", "Write the origin as https://host or http://host:port"},
		{"a path", "https://app.example.com/home", `["GET"]`, "origin", "without a path: https://app.example.com."},
		{"a query", "http://localhost:8080?x=1", `["GET"]`, "origin", "without a path: http://localhost:8080."},
		{"another scheme", "ftp://app.example.com", `["GET"]`, "origin", "An origin starts with https://"},
		{"a wildcard", "https://*.example.com", `["GET"]`, "origin", "* patterns are not supported"},
		{"a bad port", "http://localhost:99999", `["GET"]`, "origin", "a number from 1 to 65535"},
		{"empty", "", `["GET"]`, "origin", "Enter the web app's origin"},
		{"no methods", "https://app.example.com", `[]`, "methods", "Choose at least one method"},
		{"OPTIONS", "https://app.example.com", `["OPTIONS"]`, "methods", "browsers send OPTIONS themselves"},
		{"not a method", "https://app.example.com", `["FETCH"]`, "methods", "Use HTTP method names"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			body := `[{"origin":"https://ok.example"},{"origin":` + string(mustJSON(tc.origin)) + `,"methods":` + tc.methods + `}]`
			res, out := pageCall(t, "PUT", pageBase+"/rules", "acct-a", jsonCT, body)
			var ans struct {
				Error    string        `json:"error"`
				Problems []ruleProblem `json:"problems"`
			}
			if err := json.Unmarshal([]byte(out), &ans); err != nil || res.StatusCode != 400 {
				t.Fatalf("PUT %s: %d %s", body, res.StatusCode, out)
			}
			if len(ans.Problems) != 1 {
				t.Fatalf("problems %+v, want one", ans.Problems)
			}
			p := ans.Problems[0]
			if p.Rule != 2 || p.Field != tc.field || !strings.Contains(p.Message, tc.want) {
				t.Errorf("problem %+v, want rule 2, field %s, a message with %q", p, tc.field, tc.want)
			}
			if strings.Contains(p.Message, "account") || strings.Contains(p.Message, "rule 2") {
				t.Errorf("message %q speaks of the config, not of what to write", p.Message)
			}
			if !strings.Contains(p.Detail, `account "acct-a", rule 2`) {
				t.Errorf("detail %q, want the operator's message", p.Detail)
			}
		})
	}
}

// Storage faults: a tenant reads a generic message (the storage's own,
// with its paths, goes to the log); a save whose history entry cannot
// be written is stored and served, and its answer says the history
// lacks it; a history that cannot be decoded is set aside, not lost, and
// the new one says earlier changes are missing.
func TestPageStorageFaultsToTenants(t *testing.T) {
	logFile := startPageCaddy(t)
	storeDir := filepath.Join(filepath.Dir(logFile), "storage", "atomsphere_cors", "pt")

	// acct-a's history key is a directory: unreadable and unwritable.
	histA := filepath.Join(storeDir, "history", "acct-a")
	if err := os.MkdirAll(filepath.Join(histA, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	res, body := pageCall(t, "GET", pageBase+"/history", "acct-a", nil, "")
	if res.StatusCode != 503 || strings.Contains(body, storeDir) || strings.Contains(body, "directory") || !strings.Contains(body, "cannot be shown right now") {
		t.Errorf("GET /history with an unreadable history: %d %s, want 503 with a generic message", res.StatusCode, body)
	}
	res, body = pageCall(t, "PUT", pageBase+"/rules", "acct-a", jsonCT, `[{"origin":"https://a.example","methods":["GET"]}]`)
	var ans pageRules
	if err := json.Unmarshal([]byte(body), &ans); err != nil || res.StatusCode != 200 || ans.Warning != rulestore.HistoryNotRecorded {
		t.Errorf("PUT with an unwritable history: %d %s, want 200 with the warning %q", res.StatusCode, body, rulestore.HistoryNotRecorded)
	}
	if !preflightAllowed(t, "acct-a", "https://a.example", "GET") {
		t.Error("the save is not served")
	}

	// A history that decodes to nothing (null, another account's) is an
	// empty list that says why, not a fault that stays until a save; one
	// longer than a history keeps shows the newest 20.
	if err := os.RemoveAll(histA); err != nil {
		t.Fatal(err)
	}
	for _, stored := range []string{`null`, ``, `{"account":"acct-b","changes":[]}`} {
		if err := os.WriteFile(histA, []byte(stored), 0o600); err != nil {
			t.Fatal(err)
		}
		res, body := pageCall(t, "GET", pageBase+"/history", "acct-a", nil, "")
		var h rulestore.History
		if err := json.Unmarshal([]byte(body), &h); err != nil || res.StatusCode != 200 || len(h.Changes) != 0 || h.Note == "" || h.Account != "acct-a" {
			t.Errorf("GET /history of a stored %q: %d %s, want 200, no changes, a note", stored, res.StatusCode, body)
		}
	}
	var many []string
	for i := range 30 {
		many = append(many, fmt.Sprintf(`{"time":"2026-01-01T00:00:%02dZ","by":"acct-a","rules":[]}`, 59-i))
	}
	if err := os.WriteFile(histA, []byte(`{"account":"acct-a","changes":[`+strings.Join(many, ",")+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, body = pageCall(t, "GET", pageBase+"/history", "acct-a", nil, "")
	var long rulestore.History
	if err := json.Unmarshal([]byte(body), &long); err != nil || len(long.Changes) != 20 || long.Changes[0].Time != "2026-01-01T00:00:59Z" {
		t.Errorf("a stored history of 30 changes: %d shown (%v), want the newest 20", len(long.Changes), err)
	}

	// acct-b's account key is a directory: the write fails.
	if err := os.MkdirAll(filepath.Join(storeDir, "accounts", "acct-b", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	res, body = pageCall(t, "PUT", pageBase+"/rules", "acct-b", jsonCT, `[{"origin":"https://b.example","methods":["GET"]}]`)
	if res.StatusCode != 503 || strings.Contains(body, storeDir) || strings.Contains(body, "directory") || !strings.Contains(body, "could not be saved right now") {
		t.Errorf("PUT the storage refuses: %d %s, want 503 with a generic message", res.StatusCode, body)
	}
	if !logHas(t, logFile, "a CORS page write the store did not take", "acct-b") {
		t.Error("the storage's error is not in the log")
	}

	// acct-c.'s history is not JSON: set aside, started again, said so.
	histC := filepath.Join(storeDir, "history", "acct-c.")
	if err := os.MkdirAll(filepath.Dir(histC), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(histC, []byte(`{"account":"acct-c.","changes":[{"time":"2026-01-0`), 0o600); err != nil {
		t.Fatal(err)
	}
	res, body = pageCall(t, "PUT", pageBase+"/rules", "acct-c.", jsonCT, `[{"origin":"https://c.example","methods":["GET"]}]`)
	ans = pageRules{}
	if err := json.Unmarshal([]byte(body), &ans); err != nil || res.StatusCode != 200 || ans.Warning != rulestore.HistoryRestarted {
		t.Errorf("PUT with a corrupt history: %d %s, want 200 with the warning %q", res.StatusCode, body, rulestore.HistoryRestarted)
	}
	if aside, err := os.ReadFile(filepath.Join(storeDir, "history-unreadable", "acct-c.")); err != nil || !strings.HasPrefix(string(aside), `{"account":"acct-c.","changes":[{"time":"2026-01-0`) {
		t.Errorf("the corrupt history set aside: %q %v", aside, err)
	}
	_, body = pageCall(t, "GET", pageBase+"/history", "acct-c.", nil, "")
	var h rulestore.History
	if err := json.Unmarshal([]byte(body), &h); err != nil || len(h.Changes) != 1 || h.Note == "" {
		t.Errorf("history after the restart: %s %v, want the new change and a note", body, err)
	}

	// A history with one entry that does not decode keeps the others.
	if err := os.WriteFile(histC, []byte(`{"account":"acct-c.","changes":[`+
		`{"time":"2026-01-02T00:00:00Z","by":"acct-c.","rules":[{"origin":"https://kept.example"}]},`+
		`{"time":"2026-01-01T00:00:00Z","by":"acct-c.","rules":"not rules"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, body = pageCall(t, "GET", pageBase+"/history", "acct-c.", nil, "")
	h = rulestore.History{}
	if err := json.Unmarshal([]byte(body), &h); err != nil || len(h.Changes) != 1 || h.Changes[0].Rules[0].Origin != "https://kept.example" || h.Note == "" {
		t.Errorf("a history with one bad entry: %s %v, want the good entry and a note", body, err)
	}
	res, body = pageCall(t, "PUT", pageBase+"/rules", "acct-c.", jsonCT, `[{"origin":"https://d.example","methods":["GET"]}]`)
	if res.StatusCode != 200 || strings.Contains(body, "warning") {
		t.Errorf("PUT with a partly readable history: %d %s, want 200, no warning", res.StatusCode, body)
	}
	_, body = pageCall(t, "GET", pageBase+"/history", "acct-c.", nil, "")
	h = rulestore.History{}
	if err := json.Unmarshal([]byte(body), &h); err != nil || len(h.Changes) != 2 || h.Changes[1].Rules[0].Origin != "https://kept.example" {
		t.Errorf("history after a save: %s %v, want the new change, then the kept one", body, err)
	}
	if h.Changes[0].Before == nil || len(*h.Changes[0].Before) != 1 || (*h.Changes[0].Before)[0].Origin != "https://c.example" {
		t.Errorf("the new change's before: %+v, want the rules it replaced", h.Changes[0].Before)
	}

	// acct-a's record no longer decodes: it allows no origin (as every
	// server serves it once it polls), the page shows no rules and says
	// why, and a save with the ETag it shows repairs it, rather than
	// looping on 412 with the version it served before.
	if !preflightAllowed(t, "acct-a", "https://a.example", "GET") {
		t.Fatal("acct-a's rules are not served before the test breaks them")
	}
	if err := os.WriteFile(filepath.Join(storeDir, "accounts", "acct-a"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	res, body = pageCall(t, "GET", pageBase+"/rules", "acct-a", nil, "")
	ans = pageRules{}
	if err := json.Unmarshal([]byte(body), &ans); err != nil || res.StatusCode != 200 || len(ans.Rules) != 0 || !strings.Contains(ans.Warning, "no web app is allowed") {
		t.Errorf("GET /rules of a refused record: %d %s, want no rules and a warning", res.StatusCode, body)
	}
	if preflightAllowed(t, "acct-a", "https://a.example", "GET") {
		t.Error("the page shows no rules for a refused record, yet the API still allows its old origin")
	}
	shownTag := res.Header.Get("ETag")
	res, body = pageCall(t, "PUT", pageBase+"/rules", "acct-a", withHeaders(jsonCT, "If-Match", shownTag), `[{"origin":"https://fixed.example","methods":["GET"]}]`)
	if res.StatusCode != 200 || !preflightAllowed(t, "acct-a", "https://fixed.example", "GET") {
		t.Errorf("a save over a refused record with the ETag the page showed: %d %s, want 200 and served", res.StatusCode, body)
	}
	// A save of no rules over a refused record writes the record too: the
	// refused record allows no origin already, but stays refused else.
	if err := os.WriteFile(filepath.Join(storeDir, "accounts", "acct-a"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	res, _ = pageCall(t, "GET", pageBase+"/rules", "acct-a", nil, "")
	if res, body := pageCall(t, "PUT", pageBase+"/rules", "acct-a", withHeaders(jsonCT, "If-Match", res.Header.Get("ETag")), `[]`); res.StatusCode != 200 {
		t.Fatalf("a save of no rules over a refused record: %d %s", res.StatusCode, body)
	}
	if rec, err := os.ReadFile(filepath.Join(storeDir, "accounts", "acct-a")); err != nil || string(rec) == "garbage" {
		t.Errorf("the record after a save of no rules: %q %v, want it written again", rec, err)
	}
	if _, body := pageCall(t, "GET", pageBase+"/rules", "acct-a", nil, ""); strings.Contains(body, "warning") {
		t.Errorf("GET after the repair: %s, want no warning", body)
	}
}

// The account placeholder must name who is signed in: one the client
// chooses or that is the same for every request is refused at load, in
// JSON and through the Caddyfile's shorthands; the others are named in
// the page's startup log with what must set them.
func TestPageAccountPlaceholder(t *testing.T) {
	for _, ph := range []string{
		"{http.request.uri.query.account}", "{http.request.cookie.acct}", "{env.HOME}", "{system.hostname}",
		"{http.request.uri.path.2}", "{http.request.host}", "{http.request.header.Authorization}",
		"{http.request.header.Cookie}", "tenant-{time.now.unix}",
		// The client's address, and headers the client or its browser set.
		"{http.vars.client_ip}", "{http.request.header.X-Forwarded-For}", "{http.request.header.X-Real-IP}",
		"{http.request.header.Forwarded}", "{http.request.header.Proxy-Authorization}", "{http.request.header.Sec-Fetch-Site}",
		"{http.request.header.Content-Type}", "{http.request.header.If-Match}", "{http.request.header.Accept-Language}",
		// Taken from the path by a matcher, or no user at all.
		"{http.matchers.file.relative}", "{http.regexp.x.1}", "{http.request.duration}", "{http.error.status_code}",
		"{http.auth.user.id}{http.request.uri.query.x}",
		// Placeholders that never resolve.
		"{unknown}", "{http.auth.user.}", "{HTTP.AUTH.USER.ID}", "{http.Auth.User.Id}",
		`{http.auth.user.id\}`, "{http.auth.user.id:foo}", "{http.auth.user.\u0131d}", "{http.vars.{query.x}}",
		"{http.request.header.X-Client-IP}", "{http.request.header.True-Client-IP}", "{http.request.header.CF-Connecting-IP}",
		"{http.request.header.Via}", "{http.request.header.X-Original-URL}", "{http.request.header.Range}",
		"{http.vars.trusted_proxy}", "{http.vars.root}",
		"{http.request.header.X-Original-Host}", "{http.request.header.X-Forwarded-Server}", "{http.request.header.X-Original-URI}",
		"{http.request.header.X-Forwarded-Scheme}", "{http.request.header.X-Cluster-Client-IP}", "{http.request.header.X-HTTP-Method}",
		"{http.request.header.Transfer-Encoding}", "{http.request.header.Access-Control-Request-Method}",
	} {
		p := &Page{Store: &StoreConfig{Name: "pt"}, Account: ph}
		if err := p.check(); err == nil || !strings.Contains(err.Error(), "is not who is signed in") && !strings.Contains(err.Error(), "never resolves") {
			t.Errorf("account %s: %v, want refused", ph, err)
		}
	}
	// White space around the placeholder would be part of every ID, and
	// no ID has a /.
	if err := (&Page{Store: &StoreConfig{Name: "pt"}, Account: "{http.auth.user.id} "}).check(); err == nil || !strings.Contains(err.Error(), "white space") {
		t.Errorf("an account with a trailing space: %v, want refused", err)
	}
	if err := (&Page{Store: &StoreConfig{Name: "pt"}, Account: "{http.auth.user.id}/x"}).check(); err == nil || !strings.Contains(err.Error(), "a / outside its placeholders") {
		t.Errorf("an account with a /: %v, want refused", err)
	}
	// A client certificate names an account only where every TLS
	// connection policy verifies it: with mode request or require (the
	// default without a trust pool) a client's self-signed certificate
	// names any account.
	const cert = "{http.request.tls.client.subject}"
	for _, tc := range []struct {
		desc string
		srv  *caddyhttp.Server
		ok   bool
	}{
		{"no server", nil, false},
		{"no TLS", &caddyhttp.Server{}, false},
		{"no client_auth", &caddyhttp.Server{TLSConnPolicies: caddytls.ConnectionPolicies{{}}}, false},
		{"mode require", &caddyhttp.Server{TLSConnPolicies: caddytls.ConnectionPolicies{{ClientAuthentication: &caddytls.ClientAuthentication{Mode: "require"}}}}, false},
		{"mode request", &caddyhttp.Server{TLSConnPolicies: caddytls.ConnectionPolicies{{ClientAuthentication: &caddytls.ClientAuthentication{Mode: "request"}}}}, false},
		{"no mode, no trust", &caddyhttp.Server{TLSConnPolicies: caddytls.ConnectionPolicies{{ClientAuthentication: &caddytls.ClientAuthentication{}}}}, false},
		{"one policy of two unverified", &caddyhttp.Server{TLSConnPolicies: caddytls.ConnectionPolicies{
			{ClientAuthentication: &caddytls.ClientAuthentication{Mode: "require_and_verify"}}, {}}}, false},
		{"require_and_verify", &caddyhttp.Server{TLSConnPolicies: caddytls.ConnectionPolicies{{ClientAuthentication: &caddytls.ClientAuthentication{Mode: "require_and_verify"}}}}, true},
		{"verify_if_given", &caddyhttp.Server{TLSConnPolicies: caddytls.ConnectionPolicies{{ClientAuthentication: &caddytls.ClientAuthentication{Mode: "verify_if_given"}}}}, true},
		{"no mode, a trusted CA", &caddyhttp.Server{TLSConnPolicies: caddytls.ConnectionPolicies{{ClientAuthentication: &caddytls.ClientAuthentication{TrustedCACerts: []string{"x"}}}}}, true},
	} {
		if err := checkClientCerts(cert, tc.srv); (err == nil) != tc.ok {
			t.Errorf("%s: %v, want accepted %v", tc.desc, err, tc.ok)
		}
	}
	if err := checkClientCerts("{http.auth.user.id}", nil); err != nil {
		t.Errorf("no certificate placeholder: %v", err)
	}
	p := &Page{Store: &StoreConfig{Name: "pt"}, Account: "{HTTP.AUTH.USER.ID}"}
	if err := p.check(); err == nil || !strings.Contains(err.Error(), "case-sensitive, write {http.auth.user.id}") {
		t.Errorf("{HTTP.AUTH.USER.ID}: %v, want the spelling that resolves", err)
	}
	for _, ph := range []string{"{http.auth.user.id}", "tenant-{http.request.header.X-Tenant}", "{http.vars.account}", `\{x\}-{http.auth.user.id}`,
		"{http.request.tls.client.subject}", "{http.auth.user.id}{http.auth.user.id}",
		// oauth2-proxy's identity headers, set for a signed-in user.
		"{http.request.header.X-Forwarded-User}", "{http.request.header.X-Forwarded-Email}"} {
		p := &Page{Store: &StoreConfig{Name: "pt"}, Account: ph}
		if err := p.check(); err != nil {
			t.Errorf("account %s: %v, want accepted", ph, err)
		}
	}
	for _, short := range []string{"{query.account}", "{cookie.acct}", "{path.2}", "{host}", "{env.HOME}"} {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte("http://127.0.0.1:9819 {\n\tatomsphere_cors_page {\n\t\tstore pt\n\t\taccount "+short+"\n\t}\n}\n"), nil)
		if err == nil || !strings.Contains(err.Error(), "is not who is signed in") || !strings.Contains(err.Error(), "Caddyfile:4") {
			t.Errorf("Caddyfile account %s: %v, want refused at its line", short, err)
		}
	}
	logFile := startPageCaddy(t)
	if !logHas(t, logFile, "only a verified identity may set it", "{http.auth.user.id}") {
		t.Error("the startup log does not name the placeholder the page trusts")
	}
}

// A person who opens the page without an account (here: no
// authentication in front, so no user) reads why, as a page; the API
// routes still answer JSON.
func TestPageWithoutAccountSaysWhy(t *testing.T) {
	logFile := startPageCaddy(t)
	res, body := pageCall(t, "GET", pageSite+"/open/", "", nil, "")
	if res.StatusCode != 403 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") || !strings.Contains(body, "You are not signed in to an account") {
		t.Errorf("GET / without an account: %d %s %s", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	if res.Header.Get("Content-Security-Policy") != pageCSP {
		t.Errorf("CSP %q", res.Header.Get("Content-Security-Policy"))
	}
	res, body = pageCall(t, "GET", pageSite+"/open/rules", "", nil, "")
	if res.StatusCode != 403 || !strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		t.Errorf("GET /rules without an account: %d %s %s", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	// The page says the debug log says why: it does.
	if !logHas(t, logFile, "CORS page request without an account", "the account placeholder is empty or unknown (is the user signed in?)") {
		t.Error("no debug entry says why the request has no account")
	}
}

// logHas reports whether an entry of the JSON log at path has msg and,
// among its fields' values, want.
func logHas(t *testing.T, path, msg, want string) bool {
	t.Helper()
	for _, e := range readLog(t, path) {
		if m, _ := e["msg"].(string); !strings.Contains(m, msg) {
			continue
		}
		for _, v := range e {
			if s, ok := v.(string); ok && s == want {
				return true
			}
		}
	}
	return false
}
