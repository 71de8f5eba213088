package browser

import (
	"context"
	"net/http"
	"testing"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/chromedp"

	"atomspherecors/internal/testkit"
)

// startCaddy, doRequest and corsHeaders: see testkit.
func startCaddy(t testing.TB, caddyfile string) {
	t.Helper()
	testkit.StartCaddy(t, "caddyfile", caddyfile)
}

func doRequest(t testing.TB, method, url string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	return testkit.Do(t, method, url, hdr)
}

func corsHeaders(h http.Header) http.Header { return testkit.CORSHeaders(h) }

// answerSignIns answers, in the tab of ctx, every sign-in dialog
// (HTTP authentication) of the pages whose URLs match pattern with what
// answer gives for its challenge, as the user would type it, through
// the DevTools Fetch domain; other requests it pauses go on unchanged.
func answerSignIns(t *testing.T, ctx context.Context, pattern string, answer func(*fetch.AuthChallenge) *fetch.AuthChallengeResponse) {
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
					res := answer(e.AuthChallenge)
					call(func(ctx context.Context, s cdp.Session) error {
						_, err := cdp.Call(ctx, s, fetch.ContinueWithAuth, fetch.ContinueWithAuthParams{RequestID: e.RequestID, AuthChallengeResponse: res})
						return err
					})
				}
			}
		}
	}()
	yes := true
	if err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, fetch.Enable, fetch.EnableParams{
			Patterns: []*fetch.RequestPattern{{URLPattern: pattern}}, HandleAuthRequests: &yes})
		return err
	})); err != nil {
		t.Fatalf("enabling the Fetch domain: %v", err)
	}
}
