package atomspherecors

import (
	"errors"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// An error raised before this handler runs (a matcher that fails, a
// request_body limit, a handler ordered earlier) never reaches it: Caddy
// runs the error routes of the server (handle_errors), or of a subroute
// around the handler, with its own response writer, and whatever they
// write would go out on an account path, an upstream's reflected CORS
// headers included. So this handler puts a route of its own at the head
// of those error routes: on every path that could be an account path it
// removes every Access-Control-* header and trailer the routes write and
// adds Vary: Origin (docs/behaviour.md §4). Errors this handler meets
// itself never get there: it runs the error routes inside its own writer.
//
// Where the head route goes depends on where Caddy is in provisioning the
// server, which it does in this order: the main routes (and the routes
// of every subroute in them, each before that subroute's error routes),
// then the server's error routes, then its named routes. A route whose
// handlers are being (or are yet to be) loaded still holds their JSON.

// inModuleWriterKey marks, in the request context, error routes that the
// handler runs inside its own writer.
type inModuleWriterKey struct{}

// errorPolicy is the head of one server's or subroute's error routes.
type errorPolicy struct {
	handlers   []*Handler // the atomsphere_cors handlers whose errors reach these routes
	userRoutes bool       // the server had error routes of its own
	logger     *zap.Logger
}

// policies holds the policy of each server and subroute being set up or
// running; a config's are dropped with the config.
var policies sync.Map // *caddyhttp.Server or *caddyhttp.Subroute -> *errorPolicy

// installErrorPolicies puts h under the policy of every set of error
// routes that an error raised around it can reach: those of each
// subroute around it, and the server's. It returns false when h is
// inside the server's error routes, too late to add a route there: then
// h relies on the policy of the server's other handlers, if any.
func installErrorPolicies(ctx caddy.Context, srv *caddyhttp.Server, h *Handler) (bool, error) {
	for _, m := range ctx.Modules() {
		sr, ok := m.(*caddyhttp.Subroute)
		if !ok || sr.Errors == nil || len(sr.Errors.Routes) == 0 || !pending(sr.Routes) {
			continue // no error routes, or h is in them
		}
		addPolicy(ctx, sr, &sr.Errors.Routes, h, true)
	}
	switch {
	case pending(srv.Routes):
		// h is in the main routes: the error routes are still JSON.
		if srv.Errors == nil {
			srv.Errors = new(caddyhttp.HTTPErrorConfig)
		}
		addPolicy(ctx, srv, &srv.Errors.Routes, h, len(srv.Errors.Routes) > 0)
		return true, nil
	case srv.Errors != nil && pending(srv.Errors.Routes):
		// h is in the error routes.
		if p, ok := policies.Load(srv); ok {
			p.(*errorPolicy).add(h)
		}
		return false, nil
	default:
		// h is in a named route (invoke), provisioned after the error
		// routes were compiled.
		if p, ok := policies.Load(srv); ok {
			p.(*errorPolicy).add(h)
			return true, nil
		}
		return true, wrapCompiledErrors(ctx, srv, h)
	}
}

// pending reports whether some route of routes has handlers that are
// being or are yet to be loaded.
func pending(routes caddyhttp.RouteList) bool {
	for _, r := range routes {
		if r.HandlersRaw != nil {
			return true
		}
	}
	return false
}

// addPolicy adds h to the policy of key, and the policy's route to the
// head of routes (not yet provisioned) if it is the first.
func addPolicy(ctx caddy.Context, key any, routes *caddyhttp.RouteList, h *Handler, userRoutes bool) {
	if p, ok := policies.Load(key); ok {
		p.(*errorPolicy).add(h)
		return
	}
	p := &errorPolicy{handlers: []*Handler{h}, logger: h.errLogger, userRoutes: userRoutes}
	// The route has its handler already: provisioning it loads nothing
	// and compiles the handler into the route.
	head := caddyhttp.Route{Handlers: []caddyhttp.MiddlewareHandler{p}}
	*routes = append(caddyhttp.RouteList{head}, *routes...)
	policies.Store(key, p)
	ctx.OnCancel(func() { policies.Delete(key) })
}

// add puts h under p, unless it is there already.
func (p *errorPolicy) add(h *Handler) {
	if !slices.Contains(p.handlers, h) {
		p.handlers = append(p.handlers, h)
	}
}

// wrapCompiledErrors puts the policy in front of a server's error
// routes that are compiled already, for a handler in a named route when
// no handler in the server's routes did so. Caddy has no hook for that:
// the server reads its compiled error routes from an unexported field at
// every request, so the field is replaced, once, before the server
// starts. If a Caddy version renames the field, the config is refused
// rather than served unprotected.
func wrapCompiledErrors(ctx caddy.Context, srv *caddyhttp.Server, h *Handler) error {
	f := reflect.ValueOf(srv).Elem().FieldByName("errorHandlerChain")
	if !f.IsValid() || f.Type() != reflect.TypeFor[caddyhttp.Handler]() || !f.CanAddr() {
		return errors.New("atomsphere_cors in a named route (invoke): this Caddy version gives no way to " +
			"protect the server's error routes; put atomsphere_cors in the site's routes instead")
	}
	chain := (*caddyhttp.Handler)(unsafe.Pointer(f.UnsafeAddr()))
	p := &errorPolicy{handlers: []*Handler{h}, logger: h.errLogger, userRoutes: true}
	next := *chain
	if srv.Errors == nil || len(srv.Errors.Routes) == 0 || next == nil {
		// The server runs its error chain only when it has error routes:
		// give it one, which the chain below stands for.
		p.userRoutes = false
		next = errorStatus
		if srv.Errors == nil {
			srv.Errors = new(caddyhttp.HTTPErrorConfig)
		}
		srv.Errors.Routes = caddyhttp.RouteList{{}}
	}
	*chain = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return p.ServeHTTP(w, r, next)
	})
	policies.Store(srv, p)
	ctx.OnCancel(func() { policies.Delete(srv) })
	return nil
}

// accountPath reports whether any of the policy's handlers could act on
// r: its path, or one a backend reads from it, has one of their
// prefixes, anywhere (a handler under handle_path or strip_prefix sees
// a shorter path than the one the error routes see).
func (p *errorPolicy) accountPath(r *http.Request) bool {
	for _, h := range p.handlers {
		if h.ix != nil && h.ix.mightOwn(r, !h.DisablePathGuard) {
			return true
		}
	}
	return false
}

// ServeHTTP runs the rest of the error routes, on account paths through a
// writer that lets no Access-Control-* header out.
func (p *errorPolicy) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	var err error
	if r.Context().Value(inModuleWriterKey{}) != nil || !p.accountPath(r) {
		// The handler runs these routes itself, inside its own writer,
		// or the request is not on an account path.
		err = next.ServeHTTP(w, r)
	} else {
		cw := &corsWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, vary: true}
		cw.v.vary[0] = "Origin"
		err = next.ServeHTTP(cw, r)
		if cw.wroteHeader {
			dropCORSTrailers(w.Header())
		} else {
			cw.finish()
		}
	}
	if !p.userRoutes {
		p.logAsCaddy(r)
	}
	return err
}

// logAsCaddy logs a server error at error level, as Caddy's server does
// when a server has no error routes: adding this route must not turn its
// 5xx entries into debug ones.
func (p *errorPolicy) logAsCaddy(r *http.Request) {
	err, ok := r.Context().Value(caddyhttp.ErrorCtxKey).(error)
	if !ok {
		return
	}
	status, msg, he := statusOf(err)
	if status < 500 {
		return
	}
	if ce := p.logger.Check(zapcore.ErrorLevel, msg); ce != nil {
		ce.Write(errFields(r, status, he)...)
	}
}

// Interface guards
var _ caddyhttp.MiddlewareHandler = (*errorPolicy)(nil)
