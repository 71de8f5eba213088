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

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/network"
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
	events := make(chan any, 256)
	if err := chromedp.Listen(ctx, func(ev any) {
		switch ev.(type) {
		case *fetch.EventRequestPaused, *fetch.EventAuthRequired:
			select {
			case events <- ev:
			default:
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	call := func(f func(ctx context.Context, s cdp.Session) error) {
		_ = chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error { return f(ctx, tg) }))
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-events:
				switch e := ev.(type) {
				case *fetch.EventRequestPaused:
					call(func(ctx context.Context, s cdp.Session) error {
						_, err := cdp.Call(ctx, s, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: e.RequestID})
						return err
					})
				case *fetch.EventAuthRequired:
					call(func(ctx context.Context, s cdp.Session) error {
						_, err := cdp.Call(ctx, s, fetch.ContinueWithAuth, fetch.ContinueWithAuthParams{RequestID: e.RequestID,
							AuthChallengeResponse: &fetch.AuthChallengeResponse{Response: fetch.AuthChallengeResponseResponseProvideCredentials, Username: user, Password: "demo"}})
						return err
					})
				}
			}
		}
	}()
	yes := true
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, fetch.Enable, fetch.EnableParams{
			Patterns: []*fetch.RequestPattern{{URLPattern: pattern}}, HandleAuthRequests: &yes})
		return err
	}))
	if err != nil {
		t.Fatalf("enabling the Fetch domain: %v", err)
	}
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

// Two tabs of the page, both edited: the first save wins, the second tab
// shows the 412 message and overwrites nothing.
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
	got := save(t, tab2)
	if !strings.Contains(got, "changed elsewhere") || !strings.Contains(got, "Nothing was overwritten") {
		t.Errorf("tab 2 says %q, want the message of a stale tab", got)
	}
	if rules := adminRules(t, "acct-a"); rules != `200 [{"origin":"https://first.example","methods":["GET"]}]` {
		t.Errorf("the store holds %s, want tab 1's rules", rules)
	}
	// Reloaded, tab 2 saves on the current version.
	run[bool](t, tab2, `document.getElementById('reload').click(); true`)
	waitText(t, tab2, "#rule-rows", func(s string) bool { return true })
	if n := waitText(t, tab2, "#status", func(s string) bool { return s == "" }); n != "" {
		t.Fatal(n)
	}
	for range 100 {
		if run[string](t, tab2, `(i => i ? i.value : '')(document.querySelector('#rule-rows input.origin'))`) == "https://first.example" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	addRule(t, tab2, "https://second.example", "GET")
	if got := save(t, tab2); !strings.HasPrefix(got, "Saved") {
		t.Errorf("tab 2 after a reload: %q", got)
	}
}

// An origin that is not valid is shown with its message next to its rule;
// what a user typed is shown as text, never run as HTML.
func TestBrowserPageInvalidOriginShownAsText(t *testing.T) {
	b := startPageEnv(t)
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	evil := `<img src=x onerror="window.pwned=1">`
	addRule(t, b.ctx, "https://fine.example", "GET")
	addRule(t, b.ctx, evil, "GET")
	addRule(t, b.ctx, "ftp://files.example", "GET")
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Not saved") {
		t.Fatalf("saving invalid origins: %q", got)
	}
	msgs := run[[]string](t, b.ctx, `[...document.querySelectorAll('#rule-rows tr.rule .msg')].map(m => m.textContent)`)
	if len(msgs) != 3 || msgs[0] != "" || !strings.Contains(msgs[1], `rule 2 (origin "<img src=x onerror=\"window.pwned=1\">")`) ||
		!strings.Contains(msgs[2], `rule 3 (origin "ftp://files.example"): scheme "ftp" is not http or https`) {
		t.Errorf("messages next to the rules: %q", msgs)
	}
	if n := run[int](t, b.ctx, `document.querySelectorAll('main img').length`); n != 0 {
		t.Errorf("the page has %d img elements: a typed value became HTML", n)
	}
	if pwned := run[bool](t, b.ctx, `window.pwned === 1`); pwned {
		t.Error("the typed onerror ran")
	}
	if got := adminRules(t, "acct-a"); !strings.HasPrefix(got, "404") {
		t.Errorf("the store after the refused save: %s", got)
	}
	// The same value in the test box, and a saved value in the history,
	// are text too.
	run[bool](t, b.ctx, fmt.Sprintf(`document.getElementById('check-origin').value = %q; document.getElementById('check').click(); true`, evil))
	if got := waitText(t, b.ctx, "#check-result", func(s string) bool { return s != "" }); !strings.HasPrefix(got, "Blocked") {
		t.Errorf("test box: %q", got)
	}
	if n := run[int](t, b.ctx, `document.querySelectorAll('main img').length`); n != 0 || run[bool](t, b.ctx, `window.pwned === 1`) {
		t.Error("a value in the test box became HTML")
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
