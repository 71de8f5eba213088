package atomspherecors

import (
	"context"
	"errors"
	"iter"
	"net/http"
	"reflect"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"go.uber.org/zap"
)

// A header handler with deferred operations (header >Name value, or a
// header block with defer or a require matcher) wraps the response
// writer and applies its operations when the response header is written:
// after this handler's, when it runs before this one. Nothing this
// handler does can undo a deferred Access-Control-* operation there, so
// such a request is refused with 500 and an error log naming the fix,
// rather than answered with a CORS header the module did not decide
// (docs/behaviour.md §4).

// deferredHeadersType is the type of the header handler's deferring
// writer, found by running a header handler once: the type is not
// exported.
var deferredHeadersType = func() reflect.Type {
	var found reflect.Type
	h := headers.Handler{Response: &headers.RespHeaderOps{HeaderOps: &headers.HeaderOps{}, Deferred: true}}
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	_ = h.ServeHTTP(nopWriter{}, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		found = reflect.TypeOf(w)
		return nil
	}))
	return found
}()

type nopWriter struct{}

func (nopWriter) Header() http.Header         { return http.Header{} }
func (nopWriter) Write(b []byte) (int, error) { return len(b), nil }
func (nopWriter) WriteHeader(int)             {}

// corsOpsCache remembers, per deferred *headers.HeaderOps, whether it
// touches Access-Control-* headers: a config's operations never change.
var corsOpsCache sync.Map // uintptr -> bool

// maxWriterDepth bounds the walk down a chain of response writers.
const maxWriterDepth = 32

// deferredCORSWriter returns the innermost writer of w's chain that would
// apply deferred Access-Control-* header operations after this handler
// has written its headers, or nil when there is none.
func deferredCORSWriter(w http.ResponseWriter) http.ResponseWriter {
	var found http.ResponseWriter
	for w := range writerChain(w) {
		if reflect.TypeOf(w) == deferredHeadersType && deferredTouchesCORS(w) {
			found = w
		}
	}
	return found
}

// writerChain yields w and each writer it wraps (Unwrap), outermost
// first, at most maxWriterDepth of them.
func writerChain(w http.ResponseWriter) iter.Seq[http.ResponseWriter] {
	return func(yield func(http.ResponseWriter) bool) {
		for range maxWriterDepth {
			if !yield(w) {
				return
			}
			u, ok := w.(interface{ Unwrap() http.ResponseWriter })
			if !ok {
				return
			}
			w = u.Unwrap()
		}
	}
}

// deferredTouchesCORS reports whether a header handler's deferring
// writer would set, add or replace an Access-Control-* header (or one
// whose name is a placeholder). It reads the writer's operations by
// reflection; if it cannot, it answers true, so that a change in Caddy
// fails closed.
func deferredTouchesCORS(w http.ResponseWriter) bool {
	v := reflect.ValueOf(w).Elem().FieldByName("headerOps")
	if !v.IsValid() || v.Kind() != reflect.Pointer {
		return true
	}
	if v.IsNil() {
		return false
	}
	if known, ok := corsOpsCache.Load(v.Pointer()); ok {
		return known.(bool)
	}
	ops := v.Elem()
	touches := false
	for _, field := range []string{"Add", "Set", "Replace"} {
		m := ops.FieldByName(field)
		if !m.IsValid() || m.Kind() != reflect.Map {
			touches = true
			break
		}
		for _, k := range m.MapKeys() {
			name := k.String()
			if isCORS(name) || name == "*" || strings.Contains(name, "{") {
				touches = true
			}
		}
	}
	corsOpsCache.Store(v.Pointer(), touches)
	return touches
}

// errDeferredCORSHeaders is the error logged when a request is refused
// because of deferred Access-Control-* operations before this handler.
var errDeferredCORSHeaders = errors.New("a header handler before atomsphere_cors defers operations on " +
	"Access-Control-* headers, which would override this handler's on account paths: remove them, " +
	"apply them without defer, or order that header handler after atomsphere_cors")

// refuseDeferredCORS answers 500 below the deferring writer below, so
// none of its operations apply, and logs why once per handler.
func (h *Handler) refuseDeferredCORS(below http.ResponseWriter) error {
	inner := below.(interface{ Unwrap() http.ResponseWriter }).Unwrap()
	h.warnDeferred.Do(func() {
		h.logger.Error("refusing requests on account paths with 500", zap.Error(errDeferredCORSHeaders))
	})
	dropCORS(inner.Header())
	// Every response on an account path varies with Origin, this one too.
	addVary(inner.Header(), []string{"Origin"})
	inner.WriteHeader(http.StatusInternalServerError)
	return nil
}
