package atomspherecors

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"

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

// errorPolicy is the head of a server's error routes, and of those of
// every subroute in it.
type errorPolicy struct {
	handlers   []*Handler // the atomsphere_cors handlers whose errors reach these routes
	userRoutes bool       // the server had error routes of its own
	swept      bool       // every subroute of the server is covered
	logger     *zap.Logger
}

// policies holds the policy of each server being set up or running; a
// config's are dropped with the config.
var policies sync.Map // *caddyhttp.Server -> *errorPolicy

// installErrorPolicies puts h under its server's policy, and the policy
// at the head of every set of error routes an error raised around h can
// reach: the server's, and those of every subroute of the server, around
// h or not. It returns false when h is inside the server's error routes,
// too late to add a route there: then h relies on the policy of the
// server's other handlers, if any.
func installErrorPolicies(ctx caddy.Context, srv *caddyhttp.Server, h *Handler) (bool, error) {
	if p, ok := policies.Load(srv); ok {
		p := p.(*errorPolicy)
		p.add(h)
		// The subroutes around h were JSON when the policy was set up.
		p.coverLineage(ctx)
		return !(srv.Errors != nil && pending(srv.Errors.Routes) && !pending(srv.Routes)), nil
	}
	p := &errorPolicy{handlers: []*Handler{h}, logger: h.errLogger, userRoutes: true}
	switch {
	case pending(srv.Routes):
		// h is in the main routes: the error routes are still JSON.
		if srv.Errors == nil {
			srv.Errors = new(caddyhttp.HTTPErrorConfig)
		}
		p.userRoutes = len(srv.Errors.Routes) > 0
		// The head is an errorsGuard in JSON: Caddy provisions it with
		// the error routes, once every main route is loaded, and then it
		// covers the subroutes that were neither JSON nor reachable here.
		srv.Errors.Routes = append(caddyhttp.RouteList{{HandlersRaw: []json.RawMessage{guardJSON}}}, srv.Errors.Routes...)
	case srv.Errors != nil && pending(srv.Errors.Routes):
		// h is in the error routes, and no handler of the main routes
		// set the policy up.
		return false, nil
	default:
		// h is in a named route (invoke), provisioned after the error
		// routes were compiled.
		if err := p.wrapCompiledErrors(srv); err != nil {
			return true, err
		}
	}
	policies.Store(srv, p)
	ctx.OnCancel(func() { policies.Delete(srv) })
	p.coverLineage(ctx)
	p.coverServer(ctx, srv)
	if !pending(srv.Routes) && (srv.Errors == nil || !pending(srv.Errors.Routes)) {
		p.sweep(ctx, srv) // h is in a named route: everything else is loaded
	}
	return true, nil
}

// route is a route that runs p: its handler is set already, so Caddy's
// provisioning of it loads nothing and compiles the handler in.
func (p *errorPolicy) route() caddyhttp.Route {
	return caddyhttp.Route{Handlers: []caddyhttp.MiddlewareHandler{p}}
}

// coverLineage puts p at the head of the error routes of each subroute
// around the handler being provisioned (whose routes are being loaded,
// so that its error routes are still to be).
func (p *errorPolicy) coverLineage(ctx caddy.Context) {
	for _, m := range ctx.Modules() {
		if sr, ok := m.(*caddyhttp.Subroute); ok && pending(sr.Routes) {
			p.coverSubroute(ctx, sr)
		}
	}
}

// coverSubroute puts p at the head of sr's error routes, once. Routes
// that are still to be provisioned get the route as it is; routes
// already provisioned (which a subroute compiles at every request) get
// it provisioned.
func (p *errorPolicy) coverSubroute(ctx caddy.Context, sr *caddyhttp.Subroute) {
	if sr.Errors == nil || len(sr.Errors.Routes) == 0 || p.heads(sr.Errors.Routes) {
		return
	}
	head := p.route()
	if !pending(sr.Errors.Routes) && !pending(sr.Routes) {
		if err := head.ProvisionHandlers(ctx, nil); err != nil {
			return
		}
	} else if pending(sr.Errors.Routes) && !pending(sr.Routes) {
		return // being provisioned: too late to add a route
	}
	sr.Errors.Routes = append(caddyhttp.RouteList{head}, sr.Errors.Routes...)
}

// heads reports whether routes start with a route of p (or a guard).
func (p *errorPolicy) heads(routes caddyhttp.RouteList) bool {
	if len(routes[0].Handlers) != 1 {
		return len(routes[0].HandlersRaw) == 1 && bytes.Equal(routes[0].HandlersRaw[0], guardJSON)
	}
	_, guard := routes[0].Handlers[0].(*errorsGuard)
	return guard || routes[0].Handlers[0] == caddyhttp.MiddlewareHandler(p)
}

// guardJSON is the JSON of an errorsGuard handler.
var guardJSON = json.RawMessage(`{"handler":"atomsphere_cors_errors"}`)

// sweep puts p at the head of the error routes of every subroute of the
// server's routes, once they are all loaded: subroutes found in the
// exported fields of any handler too (reverse_proxy's handle_response,
// intercept).
func (p *errorPolicy) sweep(ctx caddy.Context, srv *caddyhttp.Server) {
	if p.swept {
		return
	}
	p.swept = true
	p.coverServer(ctx, srv)
	if serverRewrites(srv) {
		p.markRewrittenErrors(srv)
	}
}

// errorOnAccountPath is the request variable that says an error came
// back from the server's routes on an account path.
const errorOnAccountPath = "atomsphere_cors_error_on_account_path"

// markRewrittenErrors wraps the server's routes so that an error coming
// back from them on an account path, as the routes left the path (a
// rewrite into an account path, then a handler failing before the
// module), is marked in the request's variables: Caddy restores the
// original target before it runs the error routes, and that one need not
// be an account path. Caddy has no hook for it; the routes are read from
// an unexported field at every request, so the field is replaced once,
// before the server starts (wrapServerChain, caddyinternals.go, which
// checks the field when the module loads).
func (p *errorPolicy) markRewrittenErrors(srv *caddyhttp.Server) {
	wrapServerChain(srv, "primaryHandlerChain", func(next caddyhttp.Handler) caddyhttp.Handler {
		if next == nil {
			return nil
		}
		return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			err := next.ServeHTTP(w, r)
			if err != nil && p.accountPath(r) {
				caddyhttp.SetVar(r.Context(), errorOnAccountPath, true)
			}
			return err
		})
	})
}

// coverServer puts p at the head of the error routes of every subroute
// of srv's routes, error routes and named routes: those already loaded
// directly, those still JSON through their JSON.
func (p *errorPolicy) coverServer(ctx caddy.Context, srv *caddyhttp.Server) {
	budget := maxSweep
	p.coverValue(ctx, reflect.ValueOf(srv.Routes), 0, &budget)
	if srv.Errors != nil {
		p.coverValue(ctx, reflect.ValueOf(srv.Errors.Routes), 0, &budget)
	}
	for _, r := range srv.NamedRoutes {
		// A route list of the one route, so that its JSON is covered
		// (the list shares the route's JSON).
		p.coverValue(ctx, reflect.ValueOf(caddyhttp.RouteList{*r}), 0, &budget)
	}
}

// maxSweep bounds the values sweep looks at.
const maxSweep = 1 << 16

var (
	subrouteType  = reflect.TypeFor[*caddyhttp.Subroute]()
	routeListType = reflect.TypeFor[caddyhttp.RouteList]()
)

// coverValue looks for subroutes in v, through exported fields, slices,
// pointers and interfaces, depth and budget bounded.
func (p *errorPolicy) coverValue(ctx caddy.Context, v reflect.Value, depth int, budget *int) {
	if depth > 4*maxRouteDepth || *budget <= 0 || !v.IsValid() {
		return
	}
	*budget--
	switch v.Kind() {
	case reflect.Interface:
		p.coverValue(ctx, v.Elem(), depth+1, budget)
	case reflect.Pointer:
		if v.IsNil() {
			return
		}
		if v.Type() == subrouteType {
			p.coverSubroute(ctx, v.Interface().(*caddyhttp.Subroute))
		}
		p.coverValue(ctx, v.Elem(), depth+1, budget)
	case reflect.Slice, reflect.Array:
		if v.Type() == routeListType {
			p.coverJSONOf(v.Interface().(caddyhttp.RouteList))
		}
		if k := v.Type().Elem().Kind(); k == reflect.Uint8 || k == reflect.String || k < reflect.Array && k != reflect.Interface {
			return // bytes, strings and numbers hold no routes
		}
		for i := 0; i < v.Len() && *budget > 0; i++ {
			p.coverValue(ctx, v.Index(i), depth+1, budget)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField() && *budget > 0; i++ {
			if v.Type().Field(i).IsExported() {
				p.coverValue(ctx, v.Field(i), depth+1, budget)
			}
		}
	}
}

// coverJSONOf covers the subroutes of routes still in JSON.
func (p *errorPolicy) coverJSONOf(routes caddyhttp.RouteList) {
	for i := range routes {
		p.coverJSON(routes[i].HandlersRaw)
	}
}

// coverJSON puts a route with an errorsGuard (which finds p when it is
// provisioned) at the head of the error routes of every subroute in the
// JSON of handlers still to be loaded.
func (p *errorPolicy) coverJSON(raws []json.RawMessage) {
	for i, raw := range raws {
		if !bytes.Contains(raw, []byte(`"subroute"`)) {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		if dec.Decode(&v) != nil || !guardSubroutes(v, 0) {
			continue
		}
		if out, err := json.Marshal(v); err == nil {
			raws[i] = out
		}
	}
}

// guardRoute is the JSON of the route coverJSON adds.
var guardRoute = map[string]any{"handle": []any{map[string]any{"handler": "atomsphere_cors_errors"}}}

// guardSubroutes adds guardRoute at the head of the error routes of
// every subroute in v, and reports whether it added any.
func guardSubroutes(v any, depth int) bool {
	if depth > maxRouteDepth {
		return false
	}
	changed := false
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == "subroute" {
			if errs, ok := v["errors"].(map[string]any); ok {
				if routes, ok := errs["routes"].([]any); ok && len(routes) > 0 && !isGuardRoute(routes[0]) {
					errs["routes"] = append([]any{guardRoute}, routes...)
					changed = true
				}
			}
		}
		for _, x := range v {
			changed = guardSubroutes(x, depth+1) || changed
		}
	case []any:
		for _, x := range v {
			changed = guardSubroutes(x, depth+1) || changed
		}
	}
	return changed
}

// isGuardRoute reports whether a route in JSON is guardRoute.
func isGuardRoute(route any) bool {
	m, _ := route.(map[string]any)
	handle, _ := m["handle"].([]any)
	if len(handle) != 1 {
		return false
	}
	h, _ := handle[0].(map[string]any)
	return h["handler"] == "atomsphere_cors_errors"
}

// errorsGuard is p's handler where a subroute's error routes were still
// JSON when p was set up: Caddy loads it with the subroute, and it finds
// the policy of its server then. Caddyfiles and configs never name it;
// without a policy in its server it does nothing.
type errorsGuard struct {
	p *errorPolicy
}

// CaddyModule returns the Caddy module information.
func (errorsGuard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.atomsphere_cors_errors",
		New: func() caddy.Module { return new(errorsGuard) },
	}
}

// Provision finds the policy of the guard's server; the guard at the
// head of the server's error routes, provisioned once every main route
// is, has the policy sweep the server's subroutes then.
func (g *errorsGuard) Provision(ctx caddy.Context) error {
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		if p, ok := policies.Load(srv); ok {
			g.p = p.(*errorPolicy)
			if !pending(srv.Routes) {
				g.p.sweep(ctx, srv)
			}
		}
	}
	return nil
}

// ServeHTTP runs the rest of the error routes under the policy.
func (g *errorsGuard) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if g.p == nil {
		return next.ServeHTTP(w, r)
	}
	return g.p.ServeHTTP(w, r, next)
}

// serverRewrites reports whether a handler of srv could rewrite a
// request's path (rewrite, uri, handle_path, php_fastcgi...): one that is
// loaded, or one whose JSON names the rewrite handler.
func serverRewrites(srv *caddyhttp.Server) bool {
	if routesRewrite(srv.Routes, 0) {
		return true
	}
	for _, r := range srv.NamedRoutes {
		if routesRewrite(caddyhttp.RouteList{*r}, 0) {
			return true
		}
	}
	return false
}

func routesRewrite(routes caddyhttp.RouteList, depth int) bool {
	if depth > maxRouteDepth {
		return true
	}
	for _, r := range routes {
		for _, raw := range r.HandlersRaw {
			if bytes.Contains(raw, []byte(`"rewrite"`)) {
				return true
			}
		}
		for _, mh := range r.Handlers {
			if caddy.GetModuleName(mh) == "rewrite" {
				return true
			}
			if sr, ok := mh.(*caddyhttp.Subroute); ok && routesRewrite(sr.Routes, depth+1) {
				return true
			}
		}
	}
	return false
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

// add puts h under p, unless it is there already.
func (p *errorPolicy) add(h *Handler) {
	if !slices.Contains(p.handlers, h) {
		p.handlers = append(p.handlers, h)
	}
}

// wrapCompiledErrors puts p in front of a server's error routes that
// are compiled already, for a handler in a named route when no handler
// in the server's routes did so. Caddy has no hook for that: the server
// reads its compiled error routes from an unexported field at every
// request, so the field is replaced, once, before the server starts
// (wrapServerChain, caddyinternals.go, which checks the field when the
// module loads).
func (p *errorPolicy) wrapCompiledErrors(srv *caddyhttp.Server) error {
	wrapServerChain(srv, "errorHandlerChain", func(next caddyhttp.Handler) caddyhttp.Handler {
		if srv.Errors == nil || len(srv.Errors.Routes) == 0 || next == nil {
			// The server runs its error chain only when it has error
			// routes: give it one, which the chain below stands for.
			p.userRoutes = false
			next = errorStatus
			if srv.Errors == nil {
				srv.Errors = new(caddyhttp.HTTPErrorConfig)
			}
			srv.Errors.Routes = caddyhttp.RouteList{{}}
		}
		return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return p.ServeHTTP(w, r, next)
		})
	})
	return nil
}

// accountPath reports whether any of the policy's handlers could act on
// r: its path, or one a backend reads from it, has one of their
// prefixes, anywhere (a handler under handle_path or strip_prefix sees
// a shorter path than the one the error routes see).
func (p *errorPolicy) accountPath(r *http.Request) bool {
	if on, _ := caddyhttp.GetVar(r.Context(), errorOnAccountPath).(bool); on {
		return true
	}
	for _, h := range p.handlers {
		if h.ix != nil && h.ix.MightOwn(r) {
			return true
		}
	}
	return false
}

// ServeHTTP runs the rest of the error routes, on account paths through a
// writer that lets no Access-Control-* header out.
func (p *errorPolicy) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	var err error
	if r.Context().Value(inModuleWriterKey{}) != nil {
		// The handler runs these routes itself, inside its own writer.
		err = next.ServeHTTP(w, r)
	} else {
		// On an account path, as the request is now or as the error
		// routes leave it (they may rewrite into one).
		cw := &corsWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, vary: true}
		cw.v.vary[0] = "Origin"
		ew := newErrorWriter(cw, r)
		if p.accountPath(r) {
			noSwitch(r)
		} else {
			ew.lazy = func() bool { return p.accountPath(r) }
		}
		err = next.ServeHTTP(ew, r)
		if ew.decide(); !ew.off {
			if cw.wroteHeader {
				dropCORSTrailers(w.Header())
			} else {
				cw.finish()
			}
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

// errorWriter is the writer of error routes for a request on an account
// path: the module's corsWriter, which lets out no Access-Control-* header
// but its own, and no protocol switch, whatever the routes do (a
// reverse_proxy given the upgrade headers back, say): a 101, or a 2xx to
// a CONNECT (a WebSocket over HTTP/2 or HTTP/3), is sent as 403 with no
// body, and the connection is not handed over. With lazy set, whether the
// request is on an account path is decided when the routes first write
// (they may have rewritten it into one); off, everything passes through.
type errorWriter struct {
	cw      *corsWriter
	w       http.ResponseWriter // the writer below cw
	lazy    func() bool
	connect bool // the request is a CONNECT
	off     bool // not on an account path: pass everything through
	blocked bool // a protocol switch was refused: no body
}

func newErrorWriter(cw *corsWriter, r *http.Request) *errorWriter {
	return &errorWriter{cw: cw, w: cw.ResponseWriter, connect: r.Method == http.MethodConnect}
}

// errNoSwitch refuses a protocol switch that error routes attempt.
var errNoSwitch = errors.New("atomsphere_cors: error routes on an account path do not switch protocols")

// decide makes the lazy decision, once.
func (ew *errorWriter) decide() {
	if ew.lazy != nil {
		ew.off = !ew.lazy()
		ew.lazy = nil
	}
}

func (ew *errorWriter) Header() http.Header { return ew.w.Header() }

func (ew *errorWriter) WriteHeader(status int) {
	if ew.lazy != nil && status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		// An informational answer (103 Early Hints) is not the final
		// one: decide for it alone, and again at the final answer,
		// after whatever rewrite comes in between.
		if ew.lazy() {
			ew.cw.finish()
		}
		ew.w.WriteHeader(status)
		return
	}
	if ew.decide(); ew.off {
		ew.w.WriteHeader(status)
		return
	}
	if status == http.StatusSwitchingProtocols || ew.connect && status >= 200 && status < 300 {
		status, ew.blocked = http.StatusForbidden, true
		// What the upstream said of the switch, and the length of a
		// body that is not sent, do not belong on the refusal. Keys are
		// compared in any case: reverse_proxy spells the WebSocket ones
		// as RFC 6455 does (Sec-WebSocket-Accept), not as Go would.
		hdr := ew.w.Header()
		for k := range hdr {
			switch strings.ToLower(k) {
			case "upgrade", "connection", "content-length", "sec-websocket-accept", "sec-websocket-protocol",
				"sec-websocket-extensions":
				delete(hdr, k)
			}
		}
	}
	ew.cw.WriteHeader(status)
}

func (ew *errorWriter) Write(b []byte) (int, error) {
	if ew.decide(); ew.off {
		return ew.w.Write(b)
	}
	if !ew.cw.wroteHeader {
		ew.WriteHeader(http.StatusOK)
	}
	if ew.blocked {
		return 0, errNoSwitch
	}
	return ew.cw.Write(b)
}

func (ew *errorWriter) ReadFrom(src io.Reader) (int64, error) {
	if ew.decide(); ew.off {
		return io.Copy(ew.w, src)
	}
	if !ew.cw.wroteHeader {
		ew.WriteHeader(http.StatusOK)
	}
	if ew.blocked {
		return 0, errNoSwitch
	}
	return ew.cw.ReadFrom(src)
}

func (ew *errorWriter) FlushError() error {
	if ew.decide(); ew.off {
		return http.NewResponseController(ew.w).Flush()
	}
	if !ew.cw.wroteHeader {
		ew.WriteHeader(http.StatusOK)
	}
	return ew.cw.FlushError()
}

func (ew *errorWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if ew.decide(); ew.off {
		return http.NewResponseController(ew.w).Hijack()
	}
	return nil, nil, errNoSwitch
}

// Unwrap gives http.ResponseController the writer below (deadlines and
// the like); flushing and hijacking go through the methods above.
func (ew *errorWriter) Unwrap() http.ResponseWriter { return ew.w }
