package atomspherecors

import (
	"context"
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
)

// Every internal of Caddy that the module reads is as it was written
// for, on the Caddy of go.mod: the check that refuses a config on a
// Caddy that changed one passes here.
func TestCaddyInternalsChecked(t *testing.T) {
	if err := checkCaddyInternals(); err != nil {
		t.Fatal(err)
	}
	if deferringWriter == nil {
		t.Fatal("the headers handler's deferring writer was not found")
	}
}

// deferredOps reads a deferring header writer's operations, and takes
// no other writer for one.
func TestDeferredOpsReadsTheWriter(t *testing.T) {
	if err := checkCaddyInternals(); err != nil {
		t.Fatal(err)
	}
	serve := func(ops *headers.HeaderOps, deferred bool) (got http.ResponseWriter) {
		h := headers.Handler{Response: &headers.RespHeaderOps{HeaderOps: ops, Deferred: deferred}}
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		_ = h.ServeHTTP(nopWriter{}, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
			got = w
			return nil
		}))
		return got
	}
	w := serve(&headers.HeaderOps{Set: http.Header{"Access-Control-Allow-Origin": {"*"}}}, true)
	ops, ok := deferredOps(w)
	if !ok || !ops.IsValid() {
		t.Fatalf("deferredOps of a deferring writer: %v, %v", ops, ok)
	}
	if set := ops.FieldByName("Set"); !set.IsValid() || set.Len() != 1 {
		t.Errorf("its Set operations: %v, want the one Access-Control-Allow-Origin", set)
	}
	if deferredTouches(ops)&touchesCORS == 0 {
		t.Error("a deferred Access-Control-Allow-Origin is not seen")
	}
	if _, ok := deferredOps(serve(&headers.HeaderOps{Set: http.Header{"X": {"y"}}}, false)); ok {
		t.Error("the writer of a header handler that defers nothing is taken for a deferring one")
	}
	if _, ok := deferredOps(newTestWriter()); ok {
		t.Error("another writer is taken for a deferring one")
	}
}

// wrapServerChain replaces the server's chain with what wrap makes of
// it: a second wrap is handed the first one's handler.
func TestWrapServerChain(t *testing.T) {
	if err := checkCaddyInternals(); err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"primaryHandlerChain", "errorHandlerChain"} {
		srv := new(caddyhttp.Server)
		first := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
		var sawNil, sawFirst bool
		wrapServerChain(srv, field, func(next caddyhttp.Handler) caddyhttp.Handler {
			sawNil = next == nil
			return first
		})
		wrapServerChain(srv, field, func(next caddyhttp.Handler) caddyhttp.Handler {
			_, sawFirst = next.(caddyhttp.HandlerFunc)
			return next
		})
		if !sawNil || !sawFirst {
			t.Errorf("%s: the first wrap saw nil %v, the second the first's handler %v", field, sawNil, sawFirst)
		}
	}
}
