package browser

// The CORS page (docs/page.md) in headless Chromium: a tenant's user signs
// in with basic_auth (the DevTools Fetch domain answers the sign-in
// dialog, as the user would), edits the account's rules with the page's
// own buttons, and a page on the origin just allowed calls the account's
// API. Origins: the CORS page on http://localhost:9801, the API on
// http://127.0.0.1:9802 (atomsphere_cors, same store, max_age 0 so every
// call is preflighted), the tenant's app on http://localhost:9803 and an
// attacker's page on http://localhost:9804 and http://127.0.0.1:9804.
// Admin: localhost:2945.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

const (
	corsPage    = "http://localhost:9801/settings/cors/"
	pageAPI     = "http://127.0.0.1:9802"
	tenantApp   = "http://localhost:9803"
	attackerSS  = "http://localhost:9804" // same site as the page, another origin
	attackerXS  = "http://127.0.0.1:9804" // another site
	pageAdminAt = "http://localhost:2945/atomsphere_cors/bt/accounts/"
	demoHash    = "$2a$10$EjKxOMqe6BWunYrjzSUfFeh46V5YrY0UFA06zS7aJ1CJCZOgwFzIO" // "demo"
)

func startPageEnv(t *testing.T) *browser {
	t.Helper()
	chromiumPath(t)
	spyReset()
	store := "store bt {\n\t\t\tpoll_interval 1h\n\t\t}"
	startCaddy(t, fmt.Sprintf(`{
	admin localhost:2945
	default_bind 127.0.0.1
	storage file_system %s
}

http://localhost:9801 {
	handle_path /settings/cors/* {
		basic_auth {
			acct-a %s
			acct-b %s
		}
		atomsphere_cors_page {
			%s
			account {http.auth.user.id}
		}
	}
}

http://:9802 {
	browsertest_spy
	atomsphere_cors {
		max_age 0
		%s
	}
	basic_auth /api/* {
		demo %s
	}
	respond /api/* `+"`"+`{"method": "{http.request.method}"}`+"`"+` 200
}

http://:9803, http://:9804 {
	root * testdata
	file_server
}
`, t.TempDir(), demoHash, demoHash, store, store, demoHash))
	return newBrowserFor(t, 60*time.Second)
}

// signIn answers the basic_auth challenges of the CORS page in the tab of
// ctx as user: Chromium then keeps the credentials and sends them with
// the page's own requests, and with any other page's requests to it.
func signIn(t *testing.T, ctx context.Context, user string) {
	t.Helper()
	signInAt(t, ctx, user, "http://localhost:9801/*")
}

// signInAt is signIn for the pages whose URLs match pattern.
func signInAt(t *testing.T, ctx context.Context, user, pattern string) {
	t.Helper()
	answerSignIns(t, ctx, pattern, func(*fetch.AuthChallenge) *fetch.AuthChallengeResponse {
		return &fetch.AuthChallengeResponse{Response: fetch.AuthChallengeResponseResponseProvideCredentials, Username: user, Password: "demo"}
	})
}

// run evaluates a script in the tab of ctx and returns its value.
func run[T any](t *testing.T, ctx context.Context, script string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](script, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluating %.200s: %v", script, err)
	}
	return v
}

// openPage opens the CORS page in the tab of ctx and waits until it shows
// the account's rules.
func openPage(t *testing.T, ctx context.Context, url, account string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("opening %s: %v", url, err)
	}
	if got := waitText(t, ctx, "#account", func(s string) bool { return s != "…" }); got != account {
		t.Fatalf("the page at %s shows account %q, want %q", url, got, account)
	}
}

// waitText waits until the text of sel passes ok, and returns it.
func waitText(t *testing.T, ctx context.Context, sel string, ok func(string) bool) string {
	t.Helper()
	var last string
	for range 200 {
		last = run[string](t, ctx, fmt.Sprintf(`(e => e ? e.textContent : '')(document.querySelector(%q))`, sel))
		if ok(last) {
			return last
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last %q)", sel, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("waiting for %s: last %q", sel, last)
	return ""
}

// addRule clicks "Add an origin", types the origin and sets the methods.
func addRule(t *testing.T, ctx context.Context, origin string, methods ...string) {
	t.Helper()
	o, _ := json.Marshal(origin)
	m, _ := json.Marshal(methods)
	run[bool](t, ctx, fmt.Sprintf(`(() => {
		document.getElementById('add-rule').click();
		const rows = document.querySelectorAll('#rule-rows tr.rule');
		const row = rows[rows.length - 1];
		row.querySelector('input.origin').value = %s;
		const want = %s;
		for (const box of row.querySelectorAll('input[type=checkbox]')) box.checked = want.includes(box.value);
		return true;
	})()`, o, m))
}

// save clicks Save and returns the status the page shows.
func save(t *testing.T, ctx context.Context) string {
	t.Helper()
	run[bool](t, ctx, `document.getElementById('status').textContent = ''; document.getElementById('save').click(); true`)
	return waitText(t, ctx, "#status", func(s string) bool { return s != "" && s != "Saving…" })
}

// adminRules reads an account through the admin routes.
func adminRules(t *testing.T, account string) string {
	t.Helper()
	res, err := http.Get(pageAdminAt + account)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return fmt.Sprintf("%d %s", res.StatusCode, strings.TrimSpace(string(b)))
}

func adminPut(t *testing.T, account, rules string) {
	t.Helper()
	req, _ := http.NewRequest("PUT", pageAdminAt+account, strings.NewReader(rules))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 201 && res.StatusCode != 200 {
		t.Fatalf("admin PUT %s: %d", account, res.StatusCode)
	}
}

// A's user allows the tenant's app GET and DELETE on the page; the app's
// credentialed calls, the preflighted DELETE included, then succeed. A's
// user removes the origin; the same calls are blocked.
func TestBrowserPageAllowThenRemove(t *testing.T) {
	b := startPageEnv(t)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	if n := run[int](t, b.ctx, `document.querySelectorAll('#rule-rows tr.rule').length`); n != 0 {
		t.Fatalf("a new account shows %d rules", n)
	}

	addRule(t, b.ctx, tenantApp, "GET", "DELETE")
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved") {
		t.Fatalf("saving: the page says %q", got)
	}
	if got := adminRules(t, "acct-a"); got != `200 [{"origin":"http://localhost:9803","methods":["GET","DELETE"]}]` {
		t.Fatalf("the store holds %s", got)
	}
	run[bool](t, b.ctx, `document.getElementById('check-origin').value = 'http://localhost:9803';
		document.getElementById('check-method').value = 'delete'; document.getElementById('check').click(); true`)
	if got := waitText(t, b.ctx, "#check-result", func(s string) bool { return s != "" }); !strings.HasPrefix(got, "Allowed") {
		t.Errorf("the test box says %q, want Allowed", got)
	}
	if got := waitText(t, b.ctx, "#history li", func(s string) bool { return strings.Contains(s, "localhost:9803") }); !strings.Contains(got, "by acct-a") {
		t.Errorf("history shows %q", got)
	}

	calls := func() (get, del fetchResult) {
		t.Helper()
		b.open(tenantApp + "/")
		auth := map[string]string{"Authorization": basicAuth("demo", "demo"), "Content-Type": "application/json"}
		get = b.fetch(pageAPI+"/api/rest/v1/acct-a/Atom/1", map[string]any{"headers": auth})
		del = b.fetch(pageAPI+"/api/rest/v1/acct-a/Atom/2", map[string]any{"method": "DELETE", "headers": auth})
		return get, del
	}
	get, del := calls()
	if get.Error != "" || get.Status != 200 || del.Error != "" || del.Status != 200 || !strings.Contains(del.Body, `"DELETE"`) {
		t.Fatalf("the app's calls after the origin was allowed: GET %+v, DELETE %+v; want both 200", get, del)
	}
	if pre := spyPreflights("127.0.0.1:9802", "/api/rest/v1/acct-a/Atom/2"); len(pre) != 1 || pre[0].ReqMethod != "DELETE" {
		t.Errorf("preflights of the DELETE: %+v, want one", pre)
	}

	openPage(t, b.ctx, corsPage, "acct-a")
	run[bool](t, b.ctx, `document.querySelector('#rule-rows tr.rule button.remove').click(); true`)
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved") {
		t.Fatalf("saving the removal: the page says %q", got)
	}
	if got := adminRules(t, "acct-a"); got != `200 []` {
		t.Fatalf("the store holds %s after the removal", got)
	}
	get, del = calls()
	mustBeBlocked(t, b, pageAPI+"/api/rest/v1/acct-a/Atom/1", get, network.CorsErrorPreflightMissingAllowOriginHeader, "")
	mustBeBlocked(t, b, pageAPI+"/api/rest/v1/acct-a/Atom/2", del, network.CorsErrorPreflightMissingAllowOriginHeader, "")
}

// A's user cannot see or change B's rules whatever the URL; pages of
// another origin, same site or not, cannot write with A's credentials.
func TestBrowserPageIsolationAndCrossSite(t *testing.T) {
	b := startPageEnv(t)
	adminPut(t, "acct-b", `[{"origin":"https://b-only.example","methods":["GET"]}]`)
	adminPut(t, "acct-a", `[{"origin":"https://a-only.example","methods":["GET"]}]`)
	signIn(t, b.ctx, "acct-a")
	for _, u := range []string{corsPage, corsPage + "?account=acct-b", corsPage + "acct-b/", corsPage + "../acct-b/", "http://localhost:9801/settings/cors/%2e%2e/acct-b/rules"} {
		if err := chromedp.Do(b.ctx, chromedp.Navigate(u)); err != nil {
			t.Fatalf("opening %s: %v", u, err)
		}
		if u == corsPage || strings.Contains(u, "?") {
			waitText(t, b.ctx, "#account", func(s string) bool { return s == "acct-a" })
			waitText(t, b.ctx, "#history", func(s string) bool { return s != "" })
		}
		html := run[string](t, b.ctx, `document.documentElement.outerHTML + [...document.querySelectorAll('input')].map(i => i.value).join(' ')`)
		if strings.Contains(html, "b-only.example") || strings.Contains(html, ">acct-b<") {
			t.Errorf("%s shows acct-b's rules to acct-a", u)
		}
	}
	openPage(t, b.ctx, corsPage, "acct-a")
	if got := run[string](t, b.ctx, `(async () => { const r = await fetch('rules?account=acct-b', {method: 'PUT',
		headers: {'Content-Type': 'application/json', 'X-Account': 'acct-b'}, body: '[{"origin":"https://a-wrote.example"}]'}); return r.status + ' ' + await r.text(); })()`); !strings.Contains(got, `"account":"acct-a"`) {
		t.Errorf("acct-a's PUT naming acct-b: %s, want acct-a's own account written", got)
	}
	if got := adminRules(t, "acct-b"); got != `200 [{"origin":"https://b-only.example","methods":["GET"]}]` {
		t.Errorf("acct-b's rules after acct-a's writes: %s", got)
	}
	before := adminRules(t, "acct-a")

	// A page of another origin, with the user signed in to the CORS page
	// in the same browser: a credentialed PUT is preflighted, the preflight
	// refused, so the PUT never leaves the browser; a no-cors POST (the one
	// write a page may send without asking) is not a write the page takes.
	for _, attacker := range []string{attackerSS, attackerXS} {
		b.open(attacker + "/")
		put := b.fetch("http://localhost:9801/settings/cors/rules", map[string]any{"method": "PUT", "credentials": "include",
			"headers": map[string]string{"Content-Type": "application/json"}, "body": `[{"origin":"https://evil.example"}]`})
		if put.Error == "" {
			t.Errorf("%s: the cross-origin PUT was not blocked: %+v", attacker, put)
		}
		post := b.fetch("http://localhost:9801/settings/cors/rules", map[string]any{"method": "POST", "mode": "no-cors", "credentials": "include",
			"headers": map[string]string{"Content-Type": "text/plain"}, "body": `[{"origin":"https://evil.example"}]`})
		if post.Error != "" || post.Type != "opaque" {
			t.Logf("%s: no-cors POST: %+v", attacker, post)
		}
	}
	if got := adminRules(t, "acct-a"); got != before {
		t.Errorf("acct-a's rules after the attacker's calls: %s, were %s", got, before)
	}
}

// Two tabs of the page, both edited: the first save wins; the second tab
// says so in plain words, keeps its user's edits, and offers to load the
// current rules, which asks first since that discards the edits
// (docs/page.md, "What the page looks like").
func TestBrowserPageStaleTab(t *testing.T) {
	b := startPageEnv(t)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	tab2, cancel := chromedp.NewContext(b.ctx)
	defer cancel()
	signIn(t, tab2, "acct-a")
	openPage(t, tab2, corsPage, "acct-a")

	addRule(t, b.ctx, "https://first.example", "GET")
	addRule(t, tab2, "https://second.example", "GET")
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved") {
		t.Fatalf("tab 1: %q", got)
	}
	const stale = "Not saved. Someone else changed these rules since you opened this page (in another tab, or " +
		"another person signed in to this account). Nothing was overwritten, and your changes are still here. " +
		"To save them, load the current rules (this discards your changes on this page) and make your change " +
		"again. Load the current rules"
	if got := save(t, tab2); got != stale {
		t.Errorf("tab 2 says %q, want %q", got, stale)
	}
	if got := originValues(t, tab2); len(got) != 1 || got[0] != "https://second.example" {
		t.Errorf("tab 2 shows %q after the refused save, want its own edit kept", got)
	}
	if rules := adminRules(t, "acct-a"); rules != `200 [{"origin":"https://first.example","methods":["GET"]}]` {
		t.Errorf("the store holds %s, want tab 1's rules", rules)
	}
	// "Load the current rules" asks first: the edit would be lost.
	click(t, tab2, "#status button#load-current")
	if !shown(t, tab2, "#confirm") {
		t.Fatal("loading the current rules over an edit did not ask")
	}
	if got := originValues(t, tab2); len(got) != 1 || got[0] != "https://second.example" {
		t.Errorf("tab 2 shows %q while asking, want its edit", got)
	}
	click(t, tab2, "#discard")
	waitJS(t, tab2, `JSON.stringify([...document.querySelectorAll('#rule-rows input.origin')].map(i => i.value))`,
		func(s string) bool { return s == `["https://first.example"]` })
	if got := text(t, tab2, "#status"); got != "" {
		t.Errorf("after loading the current rules the page says %q", got)
	}
	addRule(t, tab2, "https://second.example", "GET")
	if got := save(t, tab2); !strings.HasPrefix(got, "Saved") {
		t.Errorf("tab 2 after loading the current rules: %q", got)
	}
}

// ruleMessages is, for each rule row, its origin message, its methods
// message, whether the origin field and the method boxes are marked
// invalid, and whether each field's aria-describedby names its message.
type ruleMessages struct {
	Origin, Methods             string
	OriginInvalid, BoxesInvalid bool
	Described                   bool
}

const ruleMessagesScript = `[...document.querySelectorAll('#rule-rows tr.rule')].map(r => {
	const o = r.querySelector('input.origin'), boxes = [...r.querySelectorAll('input[type=checkbox]')];
	const om = r.querySelector('.origin-msg'), mm = r.querySelector('.methods-msg');
	return {Origin: om.textContent, Methods: mm.textContent,
		OriginInvalid: o.getAttribute('aria-invalid') === 'true',
		BoxesInvalid: boxes.length > 0 && boxes.every(b => b.getAttribute('aria-invalid') === 'true'),
		Described: document.getElementById(o.getAttribute('aria-describedby')) === om &&
			boxes.every(b => document.getElementById(b.getAttribute('aria-describedby')) === mm)};
})`

// The server's messages for the tenant (page.go, docs/page.md) that the
// tests below expect beside a field.
const (
	msgOriginForm   = "Write the origin as https://host or http://host:port, such as https://app.example.com."
	msgOriginScheme = "An origin starts with https:// (or http:// for a local test server), such as https://app.example.com."
	msgMethodTrace  = "OPTIONS, CONNECT and TRACE cannot be allowed: browsers send OPTIONS themselves, and never send the other two."
)

// addBadMethod adds the method m to the last row with its "Add method" field.
func addBadMethod(t *testing.T, ctx context.Context, m string) {
	t.Helper()
	run[bool](t, ctx, fmt.Sprintf(`(() => { const r = [...document.querySelectorAll('#rule-rows tr.rule')].pop();
		r.querySelector('input.add-method').value = %q; r.querySelector('button.add-method-button').click(); return true; })()`, m))
}

// A refused save shows each problem beside the field it is about, in the
// tenant's words (not the operator's: no account or rule numbers), with
// aria-invalid and aria-describedby; what a user typed is shown as text,
// never run as HTML.
func TestBrowserPageProblemsBesideFields(t *testing.T) {
	b := startPageEnv(t)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	evil := `<img src=x onerror="window.pwned=1">`
	addRule(t, b.ctx, "https://fine.example", "GET")
	addRule(t, b.ctx, evil, "GET")
	addRule(t, b.ctx, "ftp://files.example", "GET")
	addRule(t, b.ctx, "https://trace.example", "GET")
	addBadMethod(t, b.ctx, "TRACE")
	if got := save(t, b.ctx); got != "Not saved. Correct the messages beside the rules, then save again." {
		t.Fatalf("saving invalid rules: %q", got)
	}
	msgs := run[[]ruleMessages](t, b.ctx, ruleMessagesScript)
	if len(msgs) != 4 {
		t.Fatalf("%d rows after the refused save", len(msgs))
	}
	for i, m := range msgs {
		if !m.Described {
			t.Errorf("row %d: aria-describedby does not name its messages", i+1)
		}
		if strings.Contains(m.Origin+m.Methods, "acct-a") || strings.Contains(m.Origin+m.Methods, "rule ") {
			t.Errorf("row %d: an operator's message: %+v", i+1, m)
		}
	}
	want := []ruleMessages{
		{},
		{Origin: msgOriginForm, OriginInvalid: true},
		{Origin: msgOriginScheme, OriginInvalid: true},
		{Methods: msgMethodTrace, BoxesInvalid: true},
	}
	for i := range want {
		want[i].Described = true
		if msgs[i] != want[i] {
			t.Errorf("row %d: %+v, want %+v", i+1, msgs[i], want[i])
		}
	}
	if n := run[int](t, b.ctx, `document.querySelectorAll('main img').length`); n != 0 {
		t.Errorf("the page has %d img elements: a typed value became HTML", n)
	}
	if got := originValues(t, b.ctx); len(got) != 4 || got[1] != evil {
		t.Errorf("the typed origins now read %q", got)
	}
	if pwned := run[bool](t, b.ctx, `window.pwned === 1`); pwned {
		t.Error("the typed onerror ran")
	}
	if got := adminRules(t, "acct-a"); !strings.HasPrefix(got, "404") {
		t.Errorf("the store after the refused save: %s", got)
	}
	// The same value in the test box is text too.
	run[bool](t, b.ctx, fmt.Sprintf(`document.getElementById('check-origin').value = %q; document.getElementById('check').click(); true`, evil))
	if got := waitText(t, b.ctx, "#check-result", func(s string) bool { return s != "" }); !strings.HasPrefix(got, "Blocked") {
		t.Errorf("test box: %q", got)
	}
	if n := run[int](t, b.ctx, `document.querySelectorAll('main img').length`); n != 0 || run[bool](t, b.ctx, `window.pwned === 1`) {
		t.Error("a value in the test box became HTML")
	}
}

// Once the rows a refused save was about are fixed or removed, their
// messages and the "Not saved" banner go; a message about no row goes at
// the next change.
func TestBrowserPageFixedRowClearsBanner(t *testing.T) {
	b := startPageEnv(t)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	addRule(t, b.ctx, "https://app.example.com/login", "GET")
	addRule(t, b.ctx, "ftp://files.example", "GET")
	addRule(t, b.ctx, "https://trace.example", "GET")
	addBadMethod(t, b.ctx, "TRACE")
	const banner = "Not saved. Correct the messages beside the rules, then save again."
	if got := save(t, b.ctx); got != banner {
		t.Fatalf("saving invalid rules: %q", got)
	}
	messages := func() []string {
		t.Helper()
		return run[[]string](t, b.ctx, `[...document.querySelectorAll('#rule-rows tr.rule')].map(r =>
			r.querySelector('.origin-msg').textContent + '|' + r.querySelector('.methods-msg').textContent +
			'|' + r.querySelector('input.origin').getAttribute('aria-invalid'))`)
	}
	if got := messages(); len(got) != 3 || got[0] == "||null" || got[1] == "||null" || !strings.HasPrefix(got[2], "|") || got[2] == "||null" {
		t.Fatalf("messages after the refused save: %q", got)
	}
	// Fixing the first row's origin clears its message; the others stay,
	// and so does the banner.
	typeIn(t, b.ctx, "#rule-rows tr.rule:nth-child(1) input.origin", "https://app.example.com")
	if got := messages(); len(got) != 3 || got[0] != "||null" || got[1] == "||null" || got[2] == "||null" {
		t.Errorf("after fixing row 1: %q", got)
	}
	if got := text(t, b.ctx, "#status"); got != banner {
		t.Errorf("after fixing row 1 of 3 the banner says %q", got)
	}
	// Removing the second row leaves the third's message.
	click(t, b.ctx, "#rule-rows tr.rule:nth-child(2) button.remove")
	if got := text(t, b.ctx, "#status"); got != banner {
		t.Errorf("after removing row 2 the banner says %q", got)
	}
	// Unticking the method refused clears the last message, and the banner.
	click(t, b.ctx, `#rule-rows tr.rule:nth-child(2) input[type=checkbox][value=TRACE]`)
	if got := messages(); len(got) != 2 || got[0] != "||null" || got[1] != "||null" {
		t.Errorf("after fixing every row: %q", got)
	}
	if got := text(t, b.ctx, "#status"); got != "" {
		t.Errorf("with every problem fixed the page still says %q", got)
	}
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved.") {
		t.Fatalf("saving the fixed rules: %q", got)
	}

	// Too many rules is about the whole list: said in the banner, and gone
	// once the list changed.
	run[bool](t, b.ctx, `(() => { for (let i = 0; i < 49; i++) document.getElementById('add-rule').click();
		[...document.querySelectorAll('#rule-rows input.origin')].forEach((o, i) => { if (!o.value) o.value = 'https://r' + i + '.example'; });
		return true; })()`)
	if got := save(t, b.ctx); got != "Not saved. At most 50 origins can be allowed: remove 1." {
		t.Fatalf("saving 51 rules: %q", got)
	}
	if n := run[int](t, b.ctx, `document.querySelectorAll('#rule-rows .msg:not(:empty)').length`); n != 0 {
		t.Errorf("%d row messages for a problem of the whole list", n)
	}
	click(t, b.ctx, "#rule-rows tr.rule:last-child button.remove")
	if got := text(t, b.ctx, "#status"); got != "" {
		t.Errorf("after a change the page still says %q", got)
	}
}

// A page that could not load the rules (the server answered an error, or
// the network failed) never saves: its Save and "Add an origin" buttons
// stay disabled, so what it shows can never replace the stored rules
// without naming their version. The failure is made inside the page, by
// replacing its fetch for one reload.
func TestBrowserPageNoSaveWithoutLoad(t *testing.T) {
	b := startPageEnv(t)
	adminPut(t, "acct-a", `[{"origin":"https://kept.example","methods":["GET"]}]`)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	if run[bool](t, b.ctx, `document.getElementById('save').disabled`) {
		t.Fatal("Save is disabled on a page that loaded the rules")
	}
	run[bool](t, b.ctx, `(() => {
		window.realFetch = window.fetch;
		window.puts = 0;
		window.fetch = (url, init) => {
			if (init && init.method === 'PUT') window.puts++;
			return Promise.resolve(new Response('{"error":"the rules are not loaded on this server yet"}',
				{status: 503, headers: {'Content-Type': 'application/json'}}));
		};
		document.getElementById('reload').click();
		return true;
	})()`)
	got := waitText(t, b.ctx, "#status", func(s string) bool { return strings.HasPrefix(s, "Could not load") })
	if !run[bool](t, b.ctx, `document.getElementById('save').disabled && document.getElementById('add-rule').disabled`) {
		t.Errorf("after %q, Save or Add is enabled", got)
	}
	run[bool](t, b.ctx, `document.getElementById('save').click(); true`)
	time.Sleep(200 * time.Millisecond)
	if n := run[int](t, b.ctx, `window.puts`); n != 0 {
		t.Errorf("the page sent %d PUT after a failed load", n)
	}
	if rules := adminRules(t, "acct-a"); rules != `200 [{"origin":"https://kept.example","methods":["GET"]}]` {
		t.Errorf("the store holds %s, want the rules the page could not load", rules)
	}
	// Loaded again, it saves, with the version it read.
	run[bool](t, b.ctx, `window.fetch = window.realFetch; document.getElementById('reload').click(); true`)
	waitText(t, b.ctx, "#status", func(s string) bool { return s == "" })
	for range 100 {
		if !run[bool](t, b.ctx, `document.getElementById('save').disabled`) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	addRule(t, b.ctx, "https://added.example", "GET")
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved") {
		t.Errorf("after a good reload: %q", got)
	}
}

// Recent changes lists what each save changed, newest first, and says
// where a change is missing (here one made by an import, which the
// history does not record); the empty history says so in a sentence, not
// as a list.
func TestBrowserPageHistoryShowsChanges(t *testing.T) {
	b := startPageEnv(t)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	waitJS(t, b.ctx, `!document.getElementById('no-history').hidden`, func(ok bool) bool { return ok })
	if got := text(t, b.ctx, "#no-history"); got != "No changes yet. Changes you save appear here." || !shown(t, b.ctx, "#no-history") {
		t.Errorf("the empty history says %q", got)
	}
	if n := run[int](t, b.ctx, `document.querySelectorAll('#history li').length`); n != 0 {
		t.Errorf("the empty history is a list of %d items", n)
	}

	addRule(t, b.ctx, "https://a.example", "GET", "POST")
	addRule(t, b.ctx, "https://b.example", "GET")
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved.") {
		t.Fatalf("saving: %q", got)
	}
	first := "acct-a: Added https://a.example (GET, POST); Added https://b.example (GET)"
	if got := waitHistory(t, b.ctx, 1); got[0] != first {
		t.Errorf("after the first save: %q, want %q", got, first)
	}
	if shown(t, b.ctx, "#no-history") {
		t.Error("the empty-history sentence stays after a change")
	}

	click(t, b.ctx, "#rule-rows tr.rule:nth-child(2) button.remove")
	click(t, b.ctx, `#rule-rows tr.rule:nth-child(1) input[type=checkbox][value=DELETE]`)
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved.") {
		t.Fatalf("saving: %q", got)
	}
	second := "acct-a: https://a.example: methods GET, POST → GET, POST, DELETE; Removed https://b.example"
	if got := waitHistory(t, b.ctx, 2); got[0] != second || got[1] != first {
		t.Errorf("after the second save: %q", got)
	}

	// An import changes the rules without a history entry.
	res, err := http.Post("http://localhost:2945/atomsphere_cors/bt/import", "application/x-ndjson",
		strings.NewReader(`{"account":"acct-a","rules":[{"origin":"https://a.example","methods":["GET"]}]}`+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("import: %d", res.StatusCode)
	}
	reloadRules(t, b.ctx, "https://a.example")
	addRule(t, b.ctx, "https://c.example", "GET")
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved.") {
		t.Fatalf("saving: %q", got)
	}
	want := []string{"acct-a: Added https://c.example (GET)", "(a change is missing from this list here)", second, first}
	if got := waitHistory(t, b.ctx, 4); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("after the import and a save:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Entries recorded before the history kept the rules before each change
// are compared with the next older entry; the oldest of them says what
// the rules were set to; the history's note is shown above the list.
func TestBrowserPageHistoryOlderEntries(t *testing.T) {
	b := startPageEnv(t)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	rule := func(o string, m ...string) map[string]any { return map[string]any{"origin": o, "methods": m} }
	type list = []map[string]any
	body, _ := json.Marshal(map[string]any{"account": "acct-a", "note": "Some earlier changes could not be read and are not listed.",
		"changes": []map[string]any{
			{"time": "2026-03-04T10:00:00Z", "by": "acct-a", "rules": list{rule("https://a.example", "GET"), rule("https://c.example", "GET", "DELETE")},
				"before": list{rule("https://a.example", "GET"), rule("https://c.example", "GET")}},
			{"time": "2026-03-03T10:00:00Z", "by": "admin API", "rules": list{rule("https://a.example", "GET"), rule("https://c.example", "GET")}},
			{"time": "2026-03-02T10:00:00Z", "by": "acct-a", "rules": list{rule("https://a.example", "GET"), rule("https://b.example", "GET")},
				"before": list{rule("https://a.example", "GET")}},
			{"time": "2026-03-01T10:00:00Z", "by": "<b>acct-a</b>", "rules": list{rule("https://x.example", "GET", "POST")}},
		}})
	stubFetch(t, b.ctx, map[string]stub{"GET history": {Status: 200, Body: string(body)}})
	reloadRules(t, b.ctx)
	want := []string{
		"acct-a: https://c.example: methods GET → GET, DELETE",
		"admin API: Added https://c.example (GET); Removed https://b.example",
		"acct-a: Added https://b.example (GET)",
		"(a change is missing from this list here)",
		"<b>acct-a</b>: Rules set to: https://x.example (GET, POST)",
	}
	if got := waitHistory(t, b.ctx, 5); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("history:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := text(t, b.ctx, "#history-note"); got != "Some earlier changes could not be read and are not listed." || !shown(t, b.ctx, "#history-note") {
		t.Errorf("the note reads %q", got)
	}
	if !run[bool](t, b.ctx, `!!(document.getElementById('history-note').compareDocumentPosition(document.getElementById('history')) & Node.DOCUMENT_POSITION_FOLLOWING)`) {
		t.Error("the note is not above the list")
	}
	if got := run[string](t, b.ctx, `document.querySelector('#history time').getAttribute('datetime')`); got != "2026-03-04T10:00:00Z" {
		t.Errorf("the newest entry's time is %q", got)
	}
	if n := run[int](t, b.ctx, `document.querySelectorAll('#history b b').length`); n != 0 {
		t.Error("a user name became HTML")
	}
}

// Unsaved edits (a row added, removed or changed) are not lost without
// asking: Reload asks, inline, and the browser warns before leaving the
// page; a page without edits reloads at once.
func TestBrowserPageReloadAsksWhenUnsaved(t *testing.T) {
	b := startPageEnv(t)
	adminPut(t, "acct-a", `[{"origin":"https://kept.example","methods":["GET"]}]`)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	reloadRules(t, b.ctx, "https://kept.example")
	if shown(t, b.ctx, "#confirm") || shown(t, b.ctx, "#dirty") {
		t.Fatal("a page without edits asks before reloading, or says it has changes")
	}
	// Adding a row and removing it again is no change.
	click(t, b.ctx, "#add-rule")
	if !shown(t, b.ctx, "#dirty") || text(t, b.ctx, "#dirty") != "You have changes that are not saved yet." {
		t.Error("an added row is not an unsaved change")
	}
	click(t, b.ctx, "#rule-rows tr.rule:nth-child(2) button.remove")
	if shown(t, b.ctx, "#dirty") {
		t.Error("a row added and removed again counts as a change")
	}
	click(t, b.ctx, "#rule-rows tr.rule:nth-child(1) button.remove")
	if !shown(t, b.ctx, "#dirty") {
		t.Error("a removed row is not an unsaved change")
	}
	reloadAsks := func() {
		t.Helper()
		click(t, b.ctx, "#reload")
		if !shown(t, b.ctx, "#confirm") {
			t.Fatal("Reload over unsaved edits did not ask")
		}
		if got := text(t, b.ctx, "#confirm-text"); got != "Your changes on this page are not saved. Loading the rules again throws them away." {
			t.Errorf("the question reads %q", got)
		}
	}
	reloadAsks()
	if n := run[int](t, b.ctx, `document.querySelectorAll('#rule-rows tr.rule').length`); n != 0 {
		t.Errorf("while asking the page shows %d rows, want the edit (none)", n)
	}
	if got := run[string](t, b.ctx, `document.activeElement.id`); got != "keep-editing" {
		t.Errorf("while asking, %q has the focus, want keep-editing", got)
	}
	click(t, b.ctx, "#keep-editing")
	if shown(t, b.ctx, "#confirm") {
		t.Error("Keep editing left the question")
	}
	addRule(t, b.ctx, "https://edited.example", "GET")
	b.sleep(200 * time.Millisecond)
	if got := originValues(t, b.ctx); len(got) != 1 || got[0] != "https://edited.example" {
		t.Fatalf("after Keep editing the page shows %q", got)
	}

	// Leaving the page: the browser asks (beforeunload), and staying keeps
	// the edit. The browser asks only on a page the user interacted with:
	// a real click first.
	dialogs := make(chan page.EventJavascriptDialogOpening, 4)
	if err := chromedp.Listen(b.ctx, func(ev any) {
		if e, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			select {
			case dialogs <- *e:
			default:
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(b.ctx, chromedp.Click(chromedp.CSS("#check-method"))); err != nil {
		t.Fatal(err)
	}
	run[bool](t, b.ctx, `setTimeout(() => location.reload(), 0); true`)
	select {
	case d := <-dialogs:
		if d.Type != page.DialogTypeBeforeunload {
			t.Errorf("leaving opened a %s dialog", d.Type)
		}
		handleDialog(t, b.ctx, false)
	case <-time.After(5 * time.Second):
		t.Fatal("leaving the page with unsaved edits did not ask")
	}
	b.sleep(300 * time.Millisecond)
	if got := originValues(t, b.ctx); len(got) != 1 || got[0] != "https://edited.example" {
		t.Fatalf("after staying the page shows %q", got)
	}

	// Discard loads the saved rules.
	reloadAsks()
	click(t, b.ctx, "#discard")
	waitJS(t, b.ctx, `JSON.stringify([...document.querySelectorAll('#rule-rows input.origin')].map(i => i.value))`,
		func(s string) bool { return s == `["https://kept.example"]` })
	if shown(t, b.ctx, "#confirm") || shown(t, b.ctx, "#dirty") {
		t.Error("after Discard the page still asks, or says it has changes")
	}
	// Without edits the browser lets the page go.
	run[bool](t, b.ctx, `setTimeout(() => location.reload(), 0); true`)
	select {
	case d := <-dialogs:
		t.Errorf("leaving a page without edits opened a %s dialog", d.Type)
		handleDialog(t, b.ctx, true)
	case <-time.After(time.Second):
	}
	openPage(t, b.ctx, corsPage, "acct-a")
}

// A message under a field does not move the table's columns.
func TestBrowserPageMessageKeepsColumns(t *testing.T) {
	b := startPageEnv(t)
	adminPut(t, "acct-a", `[{"origin":"https://a.example","methods":["GET"]},{"origin":"https://b.example","methods":["GET"]}]`)
	if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(1000, 700)); err != nil {
		t.Fatal(err)
	}
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	reloadRules(t, b.ctx, "https://a.example", "https://b.example")
	geometry := `JSON.stringify([...document.querySelectorAll('#rules th, #rule-rows tr.rule:nth-child(2) td, #rule-rows tr.rule:nth-child(2) input')]
		.map(e => { const r = e.getBoundingClientRect(); return [Math.round(r.left), Math.round(r.width)]; }))`
	before := run[string](t, b.ctx, geometry)
	long := "Write the origin as https://host or http://host:port, with no path, query or fragment after it: " +
		"https://a.example/some/path/that/goes/on/and/on is a page's address, not an origin."
	problems, _ := json.Marshal(map[string]any{"error": "operator's text", "problems": []map[string]any{
		{"rule": 1, "field": "origin", "origin": "https://a.example", "message": long},
		{"rule": 1, "field": "methods", "origin": "https://a.example", "message": "Use a method such as GET, POST or DELETE: TRACE cannot be allowed."},
	}})
	stubFetch(t, b.ctx, map[string]stub{"PUT rules": {Status: 400, Body: string(problems)}})
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Not saved") {
		t.Fatalf("the refused save says %q", got)
	}
	if got := text(t, b.ctx, "#rule-rows .msg"); !strings.HasPrefix(got, long) {
		t.Fatalf("the first rule's first message reads %q", got)
	}
	if after := run[string](t, b.ctx, geometry); after != before {
		t.Errorf("columns and fields (left, width) moved when the message appeared:\n%s\n%s", before, after)
	}
}

// Saved says, in plain words, that browsers may take a while to notice,
// and shows the server's warning after "Saved.".
func TestBrowserPageSavedMessage(t *testing.T) {
	b := startPageEnv(t)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	const caveat = "Browsers may take a short while (up to an hour with the default settings) to notice the change."
	addRule(t, b.ctx, "https://a.example", "GET")
	if got := save(t, b.ctx); got != "Saved. "+caveat {
		t.Errorf("saved: %q", got)
	}
	body := `{"account":"acct-a","rules":[{"origin":"https://a.example","methods":["GET"]},{"origin":"https://w.example","methods":["GET"]}],` +
		`"warning":"the change was saved, but could not be added to the list of recent changes"}`
	stubFetch(t, b.ctx, map[string]stub{"PUT rules": {Status: 200, Body: body,
		Headers: map[string]string{"Content-Type": "application/json", "ETag": `"w"`}}})
	addRule(t, b.ctx, "https://w.example", "GET")
	if got := save(t, b.ctx); got != "Saved. The change was saved, but could not be added to the list of recent changes. "+caveat {
		t.Errorf("saved with a warning: %q", got)
	}
	if shown(t, b.ctx, "#dirty") {
		t.Error("after saving the page says it has unsaved changes")
	}
}

// A page that could not load the rules says why in the user's words: not
// signed in (403), or what the server said (503).
func TestBrowserPageLoadFailures(t *testing.T) {
	b := startPageEnv(t)
	adminPut(t, "acct-a", `[{"origin":"https://a.example","methods":["GET"]}]`)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	waitHistory(t, b.ctx, 1)
	for _, tc := range []struct {
		stub stub
		want string
	}{
		{stub{Status: 403, Body: `{"error":"no account for this request: the account placeholder is empty or unknown (is the user signed in?)"}`},
			"You are not signed in to an account, so there are no rules to show. Sign in again."},
		{stub{Status: 503, Body: `{"error":"the rules are not loaded on this server yet: try again in a moment"}`},
			"Could not load the rules: The rules are not loaded on this server yet: try again in a moment."},
		{stub{Status: 503, Body: "Service Unavailable", Headers: map[string]string{"Content-Type": "text/plain"}},
			"Could not load the rules: Service Unavailable. Reload to try again."},
	} {
		stubFetch(t, b.ctx, map[string]stub{"GET rules": tc.stub})
		click(t, b.ctx, "#reload")
		got := waitText(t, b.ctx, "#status", func(s string) bool { return s != "" })
		if got != tc.want {
			t.Errorf("GET /rules %d %s: the page says %q, want %q", tc.stub.Status, tc.stub.Body, got, tc.want)
		}
		if !run[bool](t, b.ctx, `document.getElementById('save').disabled`) || shown(t, b.ctx, "#no-rules") {
			t.Errorf("GET /rules %d: Save enabled, or the no-rules sentence shown", tc.stub.Status)
		}
		// Nothing of the account loaded before stays on show.
		if got := text(t, b.ctx, "#account"); got != "…" || shown(t, b.ctx, "#history li") || shown(t, b.ctx, "#no-history") {
			t.Errorf("GET /rules %d: the page still shows account %q or its history", tc.stub.Status, got)
		}
	}
}

// Recent changes that the server cannot read say so in the server's
// words, in place of the list.
func TestBrowserPageHistoryUnavailable(t *testing.T) {
	b := startPageEnv(t)
	adminPut(t, "acct-a", `[{"origin":"https://a.example","methods":["GET"]}]`)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	waitHistory(t, b.ctx, 1)
	const why = "The list of recent changes cannot be shown right now. The rules themselves are not affected."
	stubFetch(t, b.ctx, map[string]stub{"GET history": {Status: 503, Body: `{"error":"` + why + `"}`}})
	reloadRules(t, b.ctx, "https://a.example")
	waitJS(t, b.ctx, `document.querySelectorAll('#history li').length`, func(n int) bool { return n == 0 })
	if got := text(t, b.ctx, "#history-note"); got != why || !shown(t, b.ctx, "#history-note") || shown(t, b.ctx, "#no-history") {
		t.Errorf("the unavailable history reads %q", got)
	}
}

// The page says what an origin and the methods are, and what an empty
// list means, before the user has to know the word CORS.
func TestBrowserPageExplainsItself(t *testing.T) {
	b := startPageEnv(t)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	waitJS(t, b.ctx, `!document.getElementById('no-rules').hidden`, func(ok bool) bool { return ok })
	if got := text(t, b.ctx, "#no-rules"); got != "No web app may call this account's API from a browser yet. Add an origin to allow one." {
		t.Errorf("the empty list says %q", got)
	}
	if shown(t, b.ctx, "#rules") {
		t.Error("the empty list shows an empty table")
	}
	explain := run[[]string](t, b.ctx, `[...document.querySelectorAll('dl.explain dt, dl.explain dd')].map(e => e.textContent.replace(/\s+/g, ' '))`)
	if len(explain) != 4 || explain[0] != "Origin" || explain[2] != "Methods" ||
		!strings.Contains(explain[1], "The address of the web app: its protocol, domain and, if it has one, port, with no path after it.") ||
		!strings.Contains(explain[1], "https://app.example.com") || !strings.Contains(explain[3], "GET reads data") {
		t.Errorf("the explanation reads %q", explain)
	}
	if n := run[int](t, b.ctx, `document.querySelectorAll('[style], script:not([src])').length`); n != 0 {
		t.Errorf("%d inline styles or scripts, which the page's CSP refuses", n)
	}
	click(t, b.ctx, "#add-rule")
	if !shown(t, b.ctx, "#rules") || shown(t, b.ctx, "#no-rules") {
		t.Error("with a row added, the table is hidden or the empty sentence shown")
	}
}

// A tab that shows acct-a, whose user then signs in to acct-b (another
// tab, a changed cookie or Authorization): its save is refused (the
// ETag names acct-a) and the page says that another account is signed
// in, not that someone changed the rules; its test of an origin and its
// history say so too, rather than answering for acct-b under acct-a's
// name; and showing acct-b says that it now does. The switch is made by
// sending acct-b's credentials with the page's own requests, as the
// browser does once its user signs in as acct-b.
func TestBrowserPageSignedInToAnotherAccount(t *testing.T) {
	b := startPageEnv(t)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	addRule(t, b.ctx, "https://meant-for-a.example", "GET")
	run[bool](t, b.ctx, `(() => {
		const real = window.fetch;
		window.fetch = (url, init) => {
			init = Object.assign({}, init || {});
			init.headers = Object.assign({}, init.headers || {}, {Authorization: 'Basic ' + btoa('acct-b:demo')});
			return real(url, init);
		};
		return true;
	})()`)
	const other = "You are now signed in to account acct-b, but this page shows account acct-a. "
	if got := save(t, b.ctx); got != "Not saved. "+other+"Nothing was saved to either account, and your changes are still here. Show account acct-b" {
		t.Errorf("the save says %q", got)
	}
	for _, acct := range []string{"acct-a", "acct-b"} {
		if rules := adminRules(t, acct); strings.Contains(rules, "meant-for-a") {
			t.Errorf("%s holds %s", acct, rules)
		}
	}
	if got := originValues(t, b.ctx); len(got) != 1 || got[0] != "https://meant-for-a.example" {
		t.Errorf("the page shows %q, want its edit kept", got)
	}
	typeIn(t, b.ctx, "#check-origin", "https://meant-for-a.example")
	click(t, b.ctx, "#check")
	want := other + "Reload the page to test the rules of account acct-b."
	if got := waitJS(t, b.ctx, `document.getElementById('check-result').textContent`, func(s string) bool { return s != "" }); got != want {
		t.Errorf("the test of an origin says %q, want %q", got, want)
	}
	click(t, b.ctx, "#status button#load-current")
	click(t, b.ctx, "#discard")
	got := waitJS(t, b.ctx, `document.getElementById('account').textContent + ' | ' + document.getElementById('status').textContent`,
		func(s string) bool { return strings.HasPrefix(s, "acct-b") })
	if got != "acct-b | Now showing account acct-b, the account you are signed in to." {
		t.Errorf("after showing acct-b: %q", got)
	}
}
