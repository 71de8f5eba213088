package atomspherecors

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"sync"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
)

// Caddy's unexported internals that the module reads or writes, all of
// them in this file. Caddy gives no exported way to do these three
// things, and each is what keeps a guarantee of docs/behaviour.md:
//
//   - the header handler's deferring writer (an unexported type) and its
//     headerOps field: which Access-Control-* or Vary operations it will
//     apply after this handler has written its headers (§4, §9);
//   - caddyhttp.Server.primaryHandlerChain: the server's compiled routes,
//     wrapped so that an error on a path rewritten into an account path is
//     marked before Caddy restores the original target for its error
//     routes (§9);
//   - caddyhttp.Server.errorHandlerChain: the server's compiled error
//     routes, wrapped when the handler is provisioned after them (in a
//     named route) and so cannot put its route at their head (§4).
//
// checkCaddyInternals checks all three once, when the first handler
// loads: a Caddy in which one has changed gets a config error that names
// it, rather than a module that silently stops protecting what it
// promises. Each has a test (caddyinternals_test.go).

var internals struct {
	once sync.Once
	err  error
}

// deferringWriter is the type of the header handler's deferring writer,
// found by running a header handler once, when the package loads (so
// that every handler sees it, provisioned or not).
var deferringWriter = findDeferringWriter()

// checkCaddyInternals reports, once per process, whether every internal
// this file reads is as this module was written for.
func checkCaddyInternals() error {
	internals.once.Do(func() {
		var errs []error
		if deferringWriter == nil {
			errs = append(errs, errors.New("the headers handler no longer wraps the response writer for deferred operations"))
		} else if f, ok := deferringWriter.Elem().FieldByName("headerOps"); !ok || f.Type != reflect.TypeFor[*headers.HeaderOps]() {
			errs = append(errs, fmt.Errorf("the headers handler's deferring writer %s has no field headerOps *headers.HeaderOps", deferringWriter))
		}
		for _, name := range []string{"primaryHandlerChain", "errorHandlerChain"} {
			if f, ok := reflect.TypeFor[caddyhttp.Server]().FieldByName(name); !ok || f.Type != reflect.TypeFor[caddyhttp.Handler]() {
				errs = append(errs, fmt.Errorf("caddyhttp.Server has no field %s caddyhttp.Handler", name))
			}
		}
		if err := errors.Join(errs...); err != nil {
			version, _ := caddy.Version()
			internals.err = fmt.Errorf("this Caddy version (%s) changed internals that atomsphere_cors relies on to keep "+
				"foreign CORS headers off account paths; use a Caddy version it supports (go.mod) or a newer atomsphere_cors: %w",
				version, err)
		}
	})
	return internals.err
}

// findDeferringWriter runs a header handler with a deferred operation
// and returns the type of the writer it hands the next handler.
func findDeferringWriter() reflect.Type {
	var found reflect.Type
	h := headers.Handler{Response: &headers.RespHeaderOps{HeaderOps: &headers.HeaderOps{}, Deferred: true}}
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	_ = h.ServeHTTP(nopWriter{}, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		found = reflect.TypeOf(w)
		return nil
	}))
	if found == nil || found.Kind() != reflect.Pointer || found.Elem().Kind() != reflect.Struct {
		return nil
	}
	return found
}

type nopWriter struct{}

func (nopWriter) Header() http.Header         { return http.Header{} }
func (nopWriter) Write(b []byte) (int, error) { return len(b), nil }
func (nopWriter) WriteHeader(int)             {}

// isDeferringWriter reports whether w is a header handler's deferring
// writer. It is asked of every writer of every request's chain: small
// enough to be inlined, it costs a comparison.
func isDeferringWriter(w http.ResponseWriter) bool {
	return reflect.TypeOf(w) == deferringWriter && deferringWriter != nil
}

// deferredOps returns, for a header handler's deferring writer, the
// operations it will apply, read through its headerOps field; ok is
// false for any other writer. ops is invalid when the writer has none.
func deferredOps(w http.ResponseWriter) (ops reflect.Value, ok bool) {
	if !isDeferringWriter(w) {
		return reflect.Value{}, false
	}
	v := reflect.ValueOf(w).Elem().FieldByName("headerOps")
	if !v.IsValid() || v.Type() != reflect.TypeFor[*headers.HeaderOps]() {
		// Caddy changed the writer (checkCaddyInternals refuses such a
		// config): take it for one that touches everything.
		return reflect.ValueOf(&failClosedOps).Elem(), true
	}
	if v.IsNil() {
		return reflect.Value{}, true
	}
	return v.Elem(), true
}

// failClosedOps stands for the operations of a deferring writer that
// cannot be read: a wildcard set and delete, which deferredTouches takes
// for touching every header.
var failClosedOps = headers.HeaderOps{Set: http.Header{"*": {""}}, Delete: []string{"*"}}

// wrapServerChain replaces the compiled handler chain of srv that field
// names (primaryHandlerChain or errorHandlerChain) with what wrap makes
// of it, once, before the server starts. checkCaddyInternals has checked
// the field.
func wrapServerChain(srv *caddyhttp.Server, field string, wrap func(next caddyhttp.Handler) caddyhttp.Handler) {
	f := reflect.ValueOf(srv).Elem().FieldByName(field)
	chain := (*caddyhttp.Handler)(unsafe.Pointer(f.UnsafeAddr()))
	*chain = wrap(*chain)
}
