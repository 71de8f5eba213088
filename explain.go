package atomspherecors

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"atomspherecors/internal/origin"
	"atomspherecors/internal/policy"
	"atomspherecors/internal/rulestore"
)

// Explaining a decision. The explain command (command.go) and its admin
// route (explainapi.go) find the atomsphere_cors handler that a URL
// reaches, in a config file or in the running config, and run that
// handler's own ServeHTTP on a synthetic request, with a recording
// writer and a next handler that writes 200: the answer is the
// handler's, so it cannot drift from what the server does.

// Explanation is the answer of the explain command, also its JSON
// output and that of the admin route.
type Explanation struct {
	Method string `json:"method"`
	URL    string `json:"url"`

	// Server and Handler name the handler the URL reaches: the http
	// server's name and the handler's path in the config, as the admin
	// API addresses it (/config/apps/http/servers/...). HandlerID is its
	// @id, if any. All empty when no atomsphere_cors handler is reached.
	Server    string `json:"server,omitempty"`
	Handler   string `json:"handler,omitempty"`
	HandlerID string `json:"handler_id,omitempty"`

	// Path is the request path; CleanPath the path as the module reads
	// it (behaviour §1); Prefix the path prefix it falls under.
	Path      string `json:"path"`
	CleanPath string `json:"clean_path,omitempty"`
	Prefix    string `json:"prefix,omitempty"`

	// Account is the path's account ("" when it is not an account
	// path); Rules its rules after merging and normalisation.
	Account string        `json:"account"`
	Rules   []ExplainRule `json:"rules"`

	// Origin lists the request's Origin lines as sent; OriginNormalised
	// is the one Origin in the form rules are compared in, or
	// OriginError why it has none.
	Origin           []string `json:"origin"`
	OriginNormalised string   `json:"origin_normalised,omitempty"`
	OriginError      string   `json:"origin_error,omitempty"`

	Preflight     bool     `json:"preflight"`
	RequestMethod []string `json:"request_method,omitempty"`

	// Outcome is "allowed", "denied", or "untouched" when the module
	// does not act on the request (Reason says why).
	Outcome string `json:"outcome"`
	Reason  string `json:"reason,omitempty"`
	// Reading names, when the path guard refused the request, the
	// backend reading of its target that names another account.
	Reading string `json:"reading,omitempty"`

	// Status is the response status. When NextHandler is true the
	// request went on to the next handler, which wrote 200 here: the
	// real status is whatever the site's next handlers answer.
	Status      int  `json:"status"`
	NextHandler bool `json:"next_handler"`

	// Headers are the Access-Control-* and Vary headers of the response.
	Headers http.Header `json:"headers"`
}

// ExplainRule is one rule of an account: a normalised origin and the
// Access-Control-Allow-Methods value of its methods.
type ExplainRule struct {
	Origin  string `json:"origin"`
	Methods string `json:"methods"`
}

// explainRequest is what to explain.
type explainRequest struct {
	method         string
	url            string
	origins        []string
	requestMethods []string
}

// routeTree is an http app's servers, reduced to what finding the
// handler of a URL needs; built from a config (JSON) or from the running
// app.
type routeTree []treeServer

type treeServer struct {
	name   string
	listen []string
	routes []treeRoute
}

type treeRoute struct {
	group    string
	terminal bool
	match    caddyhttp.MatcherSets
	handlers []treeHandler
}

type treeHandler struct {
	cors *Handler
	id   string      // the handler's @id, from a config
	sub  []treeRoute // a subroute's routes
}

// errNotFound means no atomsphere_cors handler is reached.
var errNotFound = errors.New("no atomsphere_cors handler")

// explain answers req against the servers of tree.
func (tree routeTree) explain(req explainRequest) (*Explanation, error) {
	r, err := syntheticRequest(req)
	if err != nil {
		return nil, err
	}
	port := r.URL.Port()
	if port == "" {
		port = "80"
		if r.URL.Scheme == "https" {
			port = "443"
		}
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("bad port in URL %q", req.url)
	}
	e := &Explanation{Method: req.method, URL: req.url, Path: r.URL.Path, Origin: req.origins,
		RequestMethod: req.requestMethods, Rules: []ExplainRule{}, Headers: http.Header{}}
	listening := false
	for _, srv := range tree {
		if !listensOn(srv.listen, p) {
			continue
		}
		listening = true
		h, at, id, err := findHandler(srv.routes, r, "/config/apps/http/servers/"+srv.name+"/routes")
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("server %s: %v", srv.name, err)
		}
		e.Server, e.Handler, e.HandlerID = srv.name, at, id
		e.run(h, req)
		return e, nil
	}
	e.Outcome = "untouched"
	e.Reason = "no atomsphere_cors handler is reached by this URL"
	if !listening {
		e.Reason = "no server listens on port " + port
	}
	return e, nil
}

// listensOn reports whether one of a server's listen addresses has port.
func listensOn(listen []string, port int) bool {
	for _, l := range listen {
		na, err := caddy.ParseNetworkAddress(l)
		if err != nil || na.IsUnixNetwork() || na.IsFdNetwork() {
			continue
		}
		if uint(port) >= na.StartPort && uint(port) <= na.EndPort {
			return true
		}
	}
	return false
}

// maxRouteDepth bounds the nesting of subroutes that findHandler and the
// error policy (errorpolicy.go) follow.
const maxRouteDepth = 32

// findHandler returns the first atomsphere_cors handler r reaches in
// routes, in the order Caddy runs them (groups, terminal routes and
// subroutes included), with its config path.
func findHandler(routes []treeRoute, r *http.Request, path string) (*Handler, string, string, error) {
	return findHandlerDepth(routes, r, path, 0)
}

func findHandlerDepth(routes []treeRoute, r *http.Request, path string, depth int) (*Handler, string, string, error) {
	if depth > maxRouteDepth {
		return nil, "", "", errors.New("subroutes nested too deep")
	}
	groups := map[string]bool{}
	for i, rt := range routes {
		if rt.group != "" && groups[rt.group] {
			continue
		}
		ok, err := rt.match.AnyMatchWithError(r)
		if err != nil {
			return nil, "", "", fmt.Errorf("matching route %s/%d: %v", path, i, err)
		}
		if !ok {
			continue
		}
		if rt.group != "" {
			groups[rt.group] = true
		}
		for j, hd := range rt.handlers {
			at := path + "/" + strconv.Itoa(i) + "/handle/" + strconv.Itoa(j)
			if hd.cors != nil {
				return hd.cors, at, hd.id, nil
			}
			if hd.sub != nil {
				h, p, id, err := findHandlerDepth(hd.sub, r, at+"/routes", depth+1)
				if !errors.Is(err, errNotFound) {
					return h, p, id, err
				}
			}
		}
		if rt.terminal {
			break
		}
	}
	return nil, "", "", errNotFound
}

// syntheticRequest builds the request to explain, as Caddy's server
// would hand it to its routes.
func syntheticRequest(req explainRequest) (*http.Request, error) {
	u, err := url.Parse(req.url)
	if err != nil {
		return nil, fmt.Errorf("bad URL %q: %v", req.url, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("bad URL %q: want http:// or https:// and a host", req.url)
	}
	if req.method == "" || strings.ContainsAny(req.method, " \t\r\n") {
		return nil, fmt.Errorf("bad method %q", req.method)
	}
	r, err := http.NewRequestWithContext(context.Background(), req.method, req.url, nil)
	if err != nil {
		return nil, fmt.Errorf("bad request: %v", err)
	}
	r.RequestURI = u.RequestURI()
	r.RemoteAddr = "127.0.0.1:1"
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.1", 1, 1
	if u.Scheme == "https" {
		r.TLS = &tls.ConnectionState{ServerName: u.Hostname(), HandshakeComplete: true}
	}
	for _, o := range req.origins {
		r.Header.Add(hdrOrigin, o)
	}
	for _, m := range req.requestMethods {
		r.Header.Add(hdrReqMethod, m)
	}
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), httptest.NewRecorder(), nil), nil
}

// run decides the request as h's ServeHTTP does, and answers it with
// h's own respond into a recorder, with a next handler that writes 200.
// Nothing is counted or logged, and no error route runs (they could
// proxy or write files; they never change CORS headers, behaviour §4).
func (e *Explanation) run(h *Handler, req explainRequest) {
	r, _ := syntheticRequest(req) // checked by explain
	ix := h.ix
	d := ix.Decide(r)
	e.Preflight = policy.KindOf(r) == policy.Preflight
	e.CleanPath = caddyhttp.CleanPath(r.URL.Path, true)
	if len(req.origins) == 1 {
		if o, err := origin.Parse(req.origins[0]); err != nil {
			e.OriginError = err.Error()
		} else {
			e.OriginNormalised = o.String()
		}
	}
	w := httptest.NewRecorder()
	nextRan := false
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		nextRan = true
		w.WriteHeader(http.StatusOK)
		return nil
	})
	var err error
	if d.Kind == policy.Untouched {
		err = next.ServeHTTP(w, r)
	} else {
		// The admin route explains with the running handlers: respond
		// through a copy that runs no error routes, rather than change
		// a handler that serves requests.
		x := *h
		x.errs = nil
		err = x.respond(w, r, next, &d, nil)
	}
	e.Status = w.Code
	if err != nil {
		e.Status, _, _ = statusOf(err)
	}
	e.NextHandler = nextRan
	e.Headers = corsAndVary(w.Header())

	if id, isAccount := ix.AccountOf(r.URL.Path); isAccount {
		e.Account = id
		e.Prefix = ix.PrefixOf(r.URL.Path)
		for _, ao := range ix.Account(id).Origins {
			e.Rules = append(e.Rules, ExplainRule{Origin: ao.Origin, Methods: ao.Methods.Header})
		}
	}
	switch {
	case d.Kind == policy.Untouched:
		e.Outcome, e.Reason = "untouched", "not an account path"
	case d.Allowed():
		e.Outcome, e.Account = "allowed", d.Account
	default:
		e.Outcome, e.Reason, e.Account, e.Reading = "denied", d.Reason.String(), d.Account, d.Reading.String()
		if d.Reason == policy.NoRules && h.store != nil && !h.store.Loaded() {
			// No account is served before the store's first read:
			// the account's rules are not known, not absent.
			e.Reason = rulestore.ReasonNotLoaded
		}
	}
}

// corsAndVary returns the Access-Control-* and Vary headers of hdr.
func corsAndVary(hdr http.Header) http.Header {
	out := http.Header{}
	for k, v := range hdr {
		if k == hdrVary || isCORS(k) {
			out[k] = slices.Clone(v)
		}
	}
	return out
}

// treeFromConfig builds the route tree of a config in Caddy's JSON,
// provisioning the route matchers and the atomsphere_cors handlers (and
// nothing else) in ctx.
func treeFromConfig(ctx caddy.Context, cfgJSON []byte) (routeTree, error) {
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string          `json:"listen"`
					Routes []json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return nil, fmt.Errorf("decoding config: %v", err)
	}
	names := make([]string, 0, len(cfg.Apps.HTTP.Servers))
	for name := range cfg.Apps.HTTP.Servers {
		names = append(names, name)
	}
	slices.Sort(names)
	var tree routeTree
	for _, name := range names {
		srv := cfg.Apps.HTTP.Servers[name]
		routes, err := routesFromConfig(ctx, srv.Routes, 0)
		if err != nil {
			return nil, fmt.Errorf("server %s: %v", name, err)
		}
		tree = append(tree, treeServer{name: name, listen: srv.Listen, routes: routes})
	}
	return tree, nil
}

func routesFromConfig(ctx caddy.Context, raws []json.RawMessage, depth int) ([]treeRoute, error) {
	if depth > maxRouteDepth {
		return nil, errors.New("subroutes nested too deep")
	}
	var out []treeRoute
	for _, raw := range raws {
		var rt caddyhttp.Route
		if err := json.Unmarshal(raw, &rt); err != nil {
			return nil, fmt.Errorf("decoding route: %v", err)
		}
		if err := rt.ProvisionMatchers(ctx); err != nil {
			return nil, err
		}
		tr := treeRoute{group: rt.Group, terminal: rt.Terminal, match: rt.MatcherSets}
		for _, hraw := range rt.HandlersRaw {
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(hraw, &fields); err != nil {
				return nil, fmt.Errorf("decoding handler: %v", err)
			}
			var name, id string
			_ = json.Unmarshal(fields["handler"], &name)
			_ = json.Unmarshal(fields["@id"], &id)
			delete(fields, "handler")
			delete(fields, "@id")
			var th treeHandler
			switch name {
			case "atomsphere_cors":
				stripped, _ := json.Marshal(fields)
				mod, err := ctx.LoadModuleByID("http.handlers.atomsphere_cors", stripped)
				if err != nil {
					return nil, err
				}
				th = treeHandler{cors: mod.(*Handler), id: id}
			case "subroute":
				var sub []json.RawMessage
				if r, ok := fields["routes"]; ok {
					if err := json.Unmarshal(r, &sub); err != nil {
						return nil, fmt.Errorf("decoding subroute: %v", err)
					}
				}
				routes, err := routesFromConfig(ctx, sub, depth+1)
				if err != nil {
					return nil, err
				}
				th = treeHandler{sub: routes}
			}
			tr.handlers = append(tr.handlers, th)
		}
		out = append(out, tr)
	}
	return out, nil
}

// treeFromApp builds the route tree of a running http app, whose
// handlers serve requests now.
func treeFromApp(app *caddyhttp.App) routeTree {
	names := make([]string, 0, len(app.Servers))
	for name := range app.Servers {
		names = append(names, name)
	}
	slices.Sort(names)
	var tree routeTree
	for _, name := range names {
		srv := app.Servers[name]
		tree = append(tree, treeServer{name: name, listen: srv.Listen, routes: routesFromApp(srv.Routes, 0)})
	}
	return tree
}

func routesFromApp(routes caddyhttp.RouteList, depth int) []treeRoute {
	if depth > maxRouteDepth {
		return nil
	}
	out := make([]treeRoute, 0, len(routes))
	for _, rt := range routes {
		tr := treeRoute{group: rt.Group, terminal: rt.Terminal, match: rt.MatcherSets}
		for _, h := range rt.Handlers {
			var th treeHandler
			switch v := h.(type) {
			case *Handler:
				th.cors = v
			case *caddyhttp.Subroute:
				th.sub = routesFromApp(v.Routes, depth+1)
			}
			tr.handlers = append(tr.handlers, th)
		}
		out = append(out, tr)
	}
	return out
}
