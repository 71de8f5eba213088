package atomspherecors

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestDeferredVaryOperationsWarn: a header handler before the module
// whose deferred operations set, replace or delete Vary takes Origin out
// of the module's Vary when the response is written (docs/behaviour.md
// §9). Such a request is still served, with its CORS headers, and the
// handler logs a warning naming the fix, once. Caddy defers every
// operation of a header block that deletes a field, so the first case is
// the common one; adding to Vary, or deleting other fields, is no cause.
func TestDeferredVaryOperationsWarn(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  string // the deferred response operations of the header handler, JSON
		warn bool
	}{
		{"a block that deletes a field and sets Vary", `"delete":["Server"],"set":{"Vary":["Accept-Encoding"]}`, true},
		{"Vary deleted", `"delete":["vary"]`, true},
		{"a delete pattern that matches Vary", `"delete":["V*"]`, true},
		{"Vary replaced", `"replace":{"Vary":[{"search":"Origin","replace":""}]}`, true},
		{"another field deleted", `"delete":["Server","X-*"]`, false},
		{"added to Vary", `"add":{"Vary":["Accept"]}`, false},
		{"another field set", `"set":{"X-Frame-Options":["DENY"]}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.WarnLevel)
			h := mustLoadHandler(t, `{"accounts":{"account-1":[{"origin":"https://app.example.com","methods":["GET"]}]}}`, core)
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			mod, err := ctx.LoadModuleByID("http.handlers.headers", json.RawMessage(`{"response":{"deferred":true,`+tc.ops+`}}`))
			if err != nil {
				t.Fatal(err)
			}
			before := mod.(caddyhttp.MiddlewareHandler)
			for range 2 {
				r := httptest.NewRequest(http.MethodGet, "/api/rest/v1/account-1/items", nil)
				r.Header.Set("Origin", "https://app.example.com")
				r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
				w := httptest.NewRecorder()
				err := before.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
					return h.ServeHTTP(w, r, next200)
				}))
				if err != nil || w.Code != http.StatusOK || w.Header().Get(hdrAllowOrigin) != "https://app.example.com" {
					t.Fatalf("allowed GET: err %v, status %d, headers %v; want 200 with the module's CORS headers", err, w.Code, w.Header())
				}
			}
			warnings := logs.FilterMessage("serving account paths without Vary: Origin").Len()
			if want := map[bool]int{true: 1, false: 0}[tc.warn]; warnings != want {
				t.Errorf("%d warnings over two requests, want %d: %v", warnings, want, logs.All())
			}
		})
	}
}

// TestDeletes: the delete patterns of Caddy's header handler, a name or
// one with "*" at its start, end or both (headers.HeaderOps), compared
// in any case.
func TestDeletes(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		want    bool
	}{
		{"Vary", true}, {"vary", true}, {"*", true}, {"V*", true}, {"*ry", true}, {"*ar*", true},
		{"{http.vars.name}", true}, {"Varyx", false}, {"X*", false}, {"*x", false}, {"*xy*", false}, {"Server", false},
	} {
		if got := deletes(tc.pattern, hdrVary); got != tc.want {
			t.Errorf("deletes(%q, Vary) = %v, want %v", tc.pattern, got, tc.want)
		}
	}
}

// What a deferring header writer touches is read from its own
// operations for each request, never remembered by their address: once
// one config's operations are collected (after a reload), another's
// can be allocated at the same address, and an answer kept for the
// first (harmless X-Frame-Options) would let the second's deferred
// Access-Control-Allow-Origin out instead of refusing it.
func TestDeferredTouchesAfterReload(t *testing.T) {
	judge := func(name string) touched {
		h := headers.Handler{Response: &headers.RespHeaderOps{
			HeaderOps: &headers.HeaderOps{Set: http.Header{name: {"x"}}}, Deferred: true}}
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		var got touched
		_ = h.ServeHTTP(nopWriter{}, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
			ops, ok := deferredOps(w)
			if !ok {
				t.Fatal("the header handler's writer is not taken for a deferring one")
			}
			got = deferredTouches(ops)
			return nil
		}))
		return got
	}
	if err := checkCaddyInternals(); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if got := judge("X-Frame-Options"); got != 0 {
			t.Fatalf("round %d: X-Frame-Options judged %b, want nothing touched", i, got)
		}
		runtime.GC()
		if got := judge("Access-Control-Allow-Origin"); got&touchesCORS == 0 {
			t.Fatalf("round %d: a deferred Access-Control-Allow-Origin judged %b after another config's operations were collected: it would reach the client", i, got)
		}
		runtime.GC()
	}
}
