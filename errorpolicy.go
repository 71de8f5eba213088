package atomspherecors

import (
	"errors"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// An error raised before this handler runs (a matcher that fails, a
// request_body limit, a handler ordered earlier) never reaches it: Caddy's
// server runs its error routes (handle_errors) with its own response
// writer, and whatever they write would go out on an account path, an
// upstream's reflected CORS headers included. So the first handler of a
// server to be provisioned puts a route of its own at the head of the
// server's error routes: on account paths it removes every
// Access-Control-* header and trailer those routes write and adds Vary:
// Origin (docs/behaviour.md §4). Errors this handler meets itself never
// get there: it runs the error routes inside its own writer.

// inModuleWriterKey marks, in the request context, error routes that the
// handler runs inside its own writer.
type inModuleWriterKey struct{}

// errorPolicy is the head of one server's error routes.
type errorPolicy struct {
	handlers   []*Handler // the server's atomsphere_cors handlers
	userRoutes bool       // the server had error routes of its own
	logger     *zap.Logger
}

// policies holds the policy of each server being set up or running; a
// config's servers are dropped with the config.
var policies sync.Map // *caddyhttp.Server -> *errorPolicy

// installErrorPolicy makes sure srv's error routes start with the policy
// and that it knows h. It returns false when the server's error routes
// are already being provisioned (h is itself in an error route), too late
// to add a route: then h relies on the policy installed by the server's
// other handlers, if any.
func installErrorPolicy(ctx caddy.Context, srv *caddyhttp.Server, h *Handler) bool {
	if p, ok := policies.Load(srv); ok {
		p := p.(*errorPolicy)
		p.handlers = append(p.handlers, h)
		return true
	}
	if srv.Errors != nil {
		for _, r := range srv.Errors.Routes {
			if len(r.Handlers) > 0 {
				return false
			}
		}
	}
	p := &errorPolicy{handlers: []*Handler{h}, logger: h.errLogger}
	if srv.Errors == nil {
		srv.Errors = new(caddyhttp.HTTPErrorConfig)
	}
	p.userRoutes = len(srv.Errors.Routes) > 0
	// The route has its handler already: provisioning it loads nothing
	// and compiles the handler into the route.
	head := caddyhttp.Route{Handlers: []caddyhttp.MiddlewareHandler{p}}
	srv.Errors.Routes = append(caddyhttp.RouteList{head}, srv.Errors.Routes...)
	policies.Store(srv, p)
	ctx.OnCancel(func() { policies.Delete(srv) })
	return true
}

// accountPath reports whether any of the server's handlers would act on
// r, under Caddy's reading of its path or a backend's.
func (p *errorPolicy) accountPath(r *http.Request) bool {
	for _, h := range p.handlers {
		if h.ix == nil {
			continue
		}
		id, ok := h.ix.accountOf(r.URL.Path)
		if ok || (!h.DisablePathGuard && guardedPath(r) && h.ix.ambiguous(r, id, ok)) {
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
	herr, ok := r.Context().Value(caddyhttp.ErrorCtxKey).(error)
	if !ok {
		return
	}
	status, msg := http.StatusInternalServerError, herr.Error()
	var he caddyhttp.HandlerError
	if errors.As(herr, &he) {
		status = he.StatusCode
		if he.Err != nil {
			msg = he.Err.Error()
		}
	}
	if status < 500 {
		return
	}
	if ce := p.logger.Check(zapcore.ErrorLevel, msg); ce != nil {
		ce.Write(errFields(r, status, he)...)
	}
}

// Interface guards
var _ caddyhttp.MiddlewareHandler = (*errorPolicy)(nil)
