package browser

// Helpers of the CORS page's tests (page_test.go) that click, type and
// read the page, stand in for the server's answers, and take
// screenshots of the page.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// waitJS evaluates script until ok passes (at most 200 times, 50 ms
// apart) and returns its last value.
func waitJS[T any](t *testing.T, ctx context.Context, script string, ok func(T) bool) T {
	t.Helper()
	var last T
	for range 200 {
		last = run[T](t, ctx, script)
		if ok(last) {
			return last
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %.200s: %v (last %v)", script, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("waiting for %.200s: last %v", script, last)
	return last
}

// click clicks the first element matching sel, from a script: no user
// gesture.
func click(t *testing.T, ctx context.Context, sel string) {
	t.Helper()
	run[bool](t, ctx, fmt.Sprintf(`(e => { e.click(); return true; })(document.querySelector(%q))`, sel))
}

// typeIn sets the value of the input sel as typing does, with an input
// event.
func typeIn(t *testing.T, ctx context.Context, sel, value string) {
	t.Helper()
	v, _ := json.Marshal(value)
	run[bool](t, ctx, fmt.Sprintf(`(e => { e.value = %s; e.dispatchEvent(new Event('input', {bubbles: true})); return true; })(document.querySelector(%q))`, v, sel))
}

// shown reports whether sel is in the page and displayed (neither it nor
// an ancestor hidden).
func shown(t *testing.T, ctx context.Context, sel string) bool {
	t.Helper()
	return run[bool](t, ctx, fmt.Sprintf(`(e => !!e && e.getClientRects().length > 0)(document.querySelector(%q))`, sel))
}

// text is the text of sel, "" when it is not in the page.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return run[string](t, ctx, fmt.Sprintf(`(e => e ? e.textContent : '')(document.querySelector(%q))`, sel))
}

// originValues is the origin field of each rule row.
func originValues(t *testing.T, ctx context.Context) []string {
	t.Helper()
	return run[[]string](t, ctx, `[...document.querySelectorAll('#rule-rows tr.rule input.origin')].map(i => i.value)`)
}

// historyScript reads "Recent changes": one string per item, "<by>:
// <line>; <line>" for a change, the item's text for anything else.
const historyScript = `[...document.querySelectorAll('#history > li')].map(li => li.classList.contains('change')
	? li.querySelector('.by').textContent + ': ' + [...li.querySelectorAll('ul.what > li')].map(l => l.textContent).join('; ')
	: li.textContent)`

// waitHistory waits until "Recent changes" lists n items and returns them.
func waitHistory(t *testing.T, ctx context.Context, n int) []string {
	t.Helper()
	return waitJS(t, ctx, historyScript, func(l []string) bool { return len(l) == n })
}

// handleDialog accepts or dismisses the JavaScript dialog (alert,
// confirm, beforeunload) the tab of ctx shows.
func handleDialog(t *testing.T, ctx context.Context, accept bool) {
	t.Helper()
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: accept})
		return err
	}))
	if err != nil {
		t.Fatalf("answering the dialog: %v", err)
	}
}

// stub is an answer the page's fetch gets instead of the server's.
type stub struct {
	Status  int               `json:"status"`
	Body    string            `json:"body"`
	Headers map[string]string `json:"headers"`
}

// stubFetch makes the page's fetch answer the requests named "<METHOD>
// <path>" ("GET history", "PUT rules") with stubs, and send the others
// to the server; nil stubs ends it.
func stubFetch(t *testing.T, ctx context.Context, stubs map[string]stub) {
	t.Helper()
	for k, s := range stubs {
		if s.Headers == nil {
			s.Headers = map[string]string{"Content-Type": "application/json"}
			stubs[k] = s
		}
	}
	j, _ := json.Marshal(stubs)
	run[bool](t, ctx, fmt.Sprintf(`(() => {
		window.realFetch = window.realFetch || window.fetch;
		const stubs = %s || {};
		window.fetch = (url, init) => {
			const s = stubs[((init && init.method) || 'GET') + ' ' + String(url).split('?')[0]];
			if (!s) return window.realFetch(url, init);
			return Promise.resolve(new Response(s.body, {status: s.status, headers: s.headers}));
		};
		return true;
	})()`, j))
}

// reloadRules clicks Reload on a page without unsaved changes and waits
// until it shows the origins want.
func reloadRules(t *testing.T, ctx context.Context, want ...string) {
	t.Helper()
	click(t, ctx, "#reload")
	w, _ := json.Marshal(append([]string{}, want...))
	waitJS(t, ctx, `JSON.stringify([...document.querySelectorAll('#rule-rows tr.rule input.origin')].map(i => i.value)) === `+
		fmt.Sprintf("%q", string(w))+` && !document.getElementById('save').disabled`, func(ok bool) bool { return ok })
}

// screenshot writes the page of ctx to $PAGE_SHOTS/<name>.png, when
// PAGE_SHOTS names a directory: the pictures are for a person to look
// at, not checked.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("PAGE_SHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBrowserPageScreenshots takes pictures of the CORS page in each of
// its states into $PAGE_SHOTS (PAGE_SHOTS=/tmp/page-shots go test -run
// TestBrowserPageScreenshots), to look at; without PAGE_SHOTS it is
// skipped.
func TestBrowserPageScreenshots(t *testing.T) {
	if os.Getenv("PAGE_SHOTS") == "" {
		t.Skip("set PAGE_SHOTS to a directory to take the CORS page's screenshots")
	}
	b := startPageEnv(t)
	if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(1000, 700)); err != nil {
		t.Fatal(err)
	}
	signIn(t, b.ctx, "acct-a")
	openPage(t, b.ctx, corsPage, "acct-a")
	waitJS(t, b.ctx, `!document.getElementById('no-history').hidden`, func(ok bool) bool { return ok })
	screenshot(t, b.ctx, "empty")

	addRule(t, b.ctx, "https://app.example.com", "GET", "POST")
	addRule(t, b.ctx, "http://localhost:8080", "GET", "DELETE")
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved") {
		t.Fatalf("saving: %q", got)
	}
	waitHistory(t, b.ctx, 1)
	click(t, b.ctx, "#rule-rows tr.rule:nth-child(2) button.remove")
	addRule(t, b.ctx, "https://admin.example.com:8443", "GET", "POST", "DELETE")
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Saved") {
		t.Fatalf("saving: %q", got)
	}
	waitHistory(t, b.ctx, 2)
	screenshot(t, b.ctx, "saved-with-history")

	reloadRules(t, b.ctx, "https://app.example.com", "https://admin.example.com:8443")
	screenshot(t, b.ctx, "loaded")

	addRule(t, b.ctx, "https://app.example.com/login", "GET")
	addRule(t, b.ctx, "ftp://files.example.com", "GET")
	run[bool](t, b.ctx, `(() => { const r = [...document.querySelectorAll('#rule-rows tr.rule')].pop();
		r.querySelector('input.add-method').value = 'TRACE'; r.querySelector('button.add-method-button').click(); return true; })()`)
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Not saved") {
		t.Fatalf("saving bad rules: %q", got)
	}
	screenshot(t, b.ctx, "error-beside-field")

	click(t, b.ctx, "#reload")
	waitJS(t, b.ctx, `!document.getElementById('confirm').hidden`, func(ok bool) bool { return ok })
	screenshot(t, b.ctx, "reload-asks")
	click(t, b.ctx, "#discard")
	waitJS(t, b.ctx, `document.querySelectorAll('#rule-rows tr.rule').length`, func(n int) bool { return n == 2 })

	adminPut(t, "acct-a", `[{"origin":"https://other.example","methods":["GET"]}]`)
	addRule(t, b.ctx, "https://new.example", "GET")
	if got := save(t, b.ctx); !strings.HasPrefix(got, "Not saved") {
		t.Fatalf("saving a stale page: %q", got)
	}
	screenshot(t, b.ctx, "stale-412")

	stubFetch(t, b.ctx, map[string]stub{"GET rules": {Status: 403, Body: `{"error":"no account for this request"}`}})
	click(t, b.ctx, "#discard") // the stale page's edits: discard them without asking
	waitText(t, b.ctx, "#status", func(s string) bool { return strings.HasPrefix(s, "You are not signed in") })
	screenshot(t, b.ctx, "not-signed-in")
}
