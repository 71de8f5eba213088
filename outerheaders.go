package atomspherecors

import (
	"errors"
	"iter"
	"net/http"
	"reflect"
	"strings"

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

// touched says which headers a header handler's deferred operations
// change.
type touched uint8

const (
	touchesCORS touched = 1 << iota // sets, adds or replaces an Access-Control-* header
	touchesVary                     // sets, replaces or deletes Vary
)

// maxWriterDepth bounds the walk down a chain of response writers.
const maxWriterDepth = 32

// deferredCORSWriter returns the innermost writer of w's chain that would
// apply deferred Access-Control-* header operations after this handler
// has written its headers, or nil when there is none.
func deferredCORSWriter(w http.ResponseWriter) http.ResponseWriter {
	found, _ := deferredWriters(w)
	return found
}

// deferredWriters is deferredCORSWriter, and whether a deferring writer
// of the chain would also set, replace or delete Vary, which takes out
// the module's Vary: Origin.
func deferredWriters(w http.ResponseWriter) (cors http.ResponseWriter, vary bool) {
	for w := range writerChain(w) {
		if !isDeferringWriter(w) {
			continue // nearly every writer: no call below
		}
		if ops, ok := deferredOps(w); ok {
			t := deferredTouches(ops)
			if t&touchesCORS != 0 {
				cors = w
			}
			vary = vary || t&touchesVary != 0
		}
	}
	return cors, vary
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

// deferredTouches says which headers the operations of a header
// handler's deferring writer (deferredOps) would change: whether they
// would set, add or replace an Access-Control-* header (or one whose
// name is a placeholder or "*"), and whether they would set, replace or
// delete Vary. If it cannot read them, it answers both, so that a change
// in Caddy fails closed.
//
// It reads them again for each request that has such a writer, and
// remembers nothing: an answer kept by the operations' address would be
// given to another config's operations allocated there once the first
// are collected (after a reload), and could let a deferred
// Access-Control-* header out. Sites without deferred header operations
// before the module never get here.
func deferredTouches(ops reflect.Value) touched {
	if !ops.IsValid() {
		return 0 // no operations
	}
	var t touched
	for _, field := range []string{"Add", "Set", "Replace"} {
		m := ops.FieldByName(field)
		if !m.IsValid() || m.Kind() != reflect.Map {
			t = touchesCORS | touchesVary
			break
		}
		for it := m.MapRange(); it.Next(); {
			name := it.Key().String()
			wild := name == "*" || strings.Contains(name, "{")
			if isCORS(name) || wild {
				t |= touchesCORS
			}
			if field != "Add" && (wild || strings.EqualFold(name, hdrVary)) {
				t |= touchesVary
			}
		}
	}
	if del := ops.FieldByName("Delete"); !del.IsValid() || del.Kind() != reflect.Slice {
		t |= touchesVary
	} else {
		for i := range del.Len() {
			if deletes(del.Index(i).String(), hdrVary) {
				t |= touchesVary
			}
		}
	}
	return t
}

// deletes reports whether a header handler's delete operation pattern
// (a name, with "*" at its start or end as a wildcard, or a
// placeholder) may delete the header name.
func deletes(pattern, name string) bool {
	pattern, name = strings.ToLower(pattern), strings.ToLower(name)
	switch {
	case strings.Contains(pattern, "{"), pattern == "*":
		return true
	case strings.HasPrefix(pattern, "*") && strings.HasSuffix(pattern, "*"):
		return strings.Contains(name, pattern[1:len(pattern)-1])
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(name, pattern[1:])
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(name, pattern[:len(pattern)-1])
	}
	return pattern == name
}

// errDeferredCORSHeaders is the error logged when a request is refused
// because of deferred Access-Control-* operations before this handler.
var errDeferredCORSHeaders = errors.New("a header handler before atomsphere_cors defers operations on " +
	"Access-Control-* headers, which would override this handler's on account paths: remove them, " +
	"apply them without defer, or order that header handler after atomsphere_cors")

// errDeferredVary is the warning logged when a header handler before
// this one defers operations that take out its Vary: Origin.
var errDeferredVary = errors.New("a header handler before atomsphere_cors defers operations that set, replace " +
	"or delete Vary (Caddy defers every operation of a header block that deletes a field), which take out " +
	"Origin from Vary on account paths, so that a shared cache could serve one origin's answer to another: " +
	"add to Vary instead (header +Vary ...), or order that header handler after atomsphere_cors")

// refuseDeferredCORS answers 500 below the deferring writer below, so
// none of its operations apply, and logs why once per handler.
func (h *Handler) refuseDeferredCORS(below http.ResponseWriter) error {
	inner := below.(interface{ Unwrap() http.ResponseWriter }).Unwrap()
	h.warnDeferred.Do(func() {
		h.logger.Error("refusing requests on account paths with 500", zap.Error(errDeferredCORSHeaders))
	})
	hdr := inner.Header()
	// Every response on an account path varies with Origin, this one too.
	setVary(hdr, []string{"Origin"}, dropCORS(hdr))
	inner.WriteHeader(http.StatusInternalServerError)
	return nil
}

// warnDeferredVary logs once per handler that deferred operations before
// it take Origin out of Vary; the request is served.
func (h *Handler) warnDeferredVary() {
	h.warnVary.Do(func() {
		h.logger.Warn("serving account paths without Vary: Origin", zap.Error(errDeferredVary))
	})
}
