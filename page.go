package atomspherecors

import (
	"embed"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"atomspherecors/internal/origin"
	"atomspherecors/internal/policy"
	"atomspherecors/internal/rulestore"
)

func init() {
	caddy.RegisterModule(Page{})
}

// Page is the CORS page of an account: a signed-in user of a tenant reads
// and edits the CORS rules of that user's account, kept in a rules store
// that atomsphere_cors handlers serve (docs/page.md).
//
// The account is the value of the Account placeholder, resolved for
// each request after the site's authentication has run; nothing in the
// path, query or body chooses it. A request whose placeholder is empty,
// unknown or not an account ID gets 403 on every route.
//
// Routes, relative to the path the handler sees (under handle_path the
// prefix is stripped): GET / (the page, and its page.js and page.css),
// GET and PUT /rules, GET /history, GET /check?origin=&method=; anything
// else is 404, and a method a route does not take 405. A write whose
// Origin is not the page's own origin, or whose Sec-Fetch-Site is not
// same-origin or none, is refused with 403; a write needs Content-Type
// application/json and a body of at most 64 KB (413 beyond).
//
// In a Caddyfile the atomsphere_cors_page directive is ordered before
// respond, with the handlers that answer requests: after basic_auth,
// forward_auth and request_header, so that it never runs before the
// identity is known.
type Page struct {
	// The rules store whose accounts the page edits, as in the
	// atomsphere_cors handler's store (docs/store.md). Required. A page
	// and a handler naming the same store with the same storage share
	// one loaded store.
	Store *StoreConfig `json:"store,omitempty"`

	// Whose account the signed-in user may edit: a placeholder resolved
	// per request, such as "{http.auth.user.id}" (the user that
	// basic_auth or another authentication handler signed in).
	// Required; it must contain a placeholder.
	Account string `json:"account,omitempty"`

	// The most rules a user may save for the account. Default: 50.
	MaxRules int `json:"max_rules,omitempty"`

	store  *rulestore.Store
	ix     *policy.Index // Decide's view of the store, for /check
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Page) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.atomsphere_cors_page",
		New: func() caddy.Module { return new(Page) },
	}
}

const (
	defaultMaxRules = 50
	maxPageBody     = 64 << 10 // a PUT /rules body
)

// check reports every problem of the page's config.
func (p *Page) check() error {
	var errs []error
	if p.Store == nil {
		errs = append(errs, errors.New("store is required: the page edits the accounts of a rules store"))
	} else {
		var probs policy.Problems
		checkStore(&Handler{Store: p.Store}, &probs)
		if err := probs.Err(); err != nil {
			errs = append(errs, err)
		}
	}
	if p.Account == "" {
		errs = append(errs, errors.New("account is required: a placeholder naming the signed-in user's account, such as {http.auth.user.id}"))
	} else if err := checkAccountTemplate(p.Account); err != nil {
		errs = append(errs, err)
	}
	if p.MaxRules < 0 {
		errs = append(errs, fmt.Errorf("max_rules %d is not positive", p.MaxRules))
	}
	return errors.Join(errs...)
}

// Provision checks the config and attaches the page to its store.
func (p *Page) Provision(ctx caddy.Context) error {
	if err := checkCaddyInternals(); err != nil {
		return err // the page looks for deferred header operations too
	}
	p.logger = ctx.Logger()
	if err := p.check(); err != nil {
		return err
	}
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if err := checkClientCerts(p.Account, srv); err != nil {
		return err
	}
	if p.MaxRules == 0 {
		p.MaxRules = defaultMaxRules
	}
	s, err := useStore(ctx, p.Store, p)
	if err != nil {
		return err
	}
	p.store = s
	// Decide's view of the store: a handler's defaults, the path guard on.
	if p.ix, err = newIndex(&Handler{}, false, s); err != nil {
		return err
	}
	for _, name := range slices.Compact(slices.Sorted(slices.Values(accountPlaceholders(p.Account)))) {
		p.logger.Info("the CORS page writes the account that this placeholder names: only a verified identity may set it",
			zap.String("account", p.Account), zap.String("placeholder", "{"+name+"}"), zap.String("set_by", trustedBy(name)))
	}
	return nil
}

// Cleanup lets go of the page's store.
func (p *Page) Cleanup() error {
	if p.store == nil {
		return nil
	}
	return releaseStore(p.store, p)
}

//go:embed page_assets
var pageAssets embed.FS

// pageFiles are the page and its assets: nothing is loaded from
// elsewhere, so the policy below allows this origin alone.
var pageFiles = map[string]string{
	"/":         "text/html; charset=utf-8",
	"/page.js":  "text/javascript; charset=utf-8",
	"/page.css": "text/css; charset=utf-8",
}

// pageCSP allows the page's own script, style and API calls, no inline
// script or style, no plugin, form or base, and no framing
// (https://www.w3.org/TR/CSP3/, frame-ancestors).
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// ServeHTTP serves the page's routes; it never calls next.
func (p *Page) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Content-Security-Policy", pageCSP)
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("Referrer-Policy", "same-origin")

	// The page's answers carry no CORS headers, whoever set them: a site
	// that reflects Origin with credentials would let any origin read
	// every user's rules.
	dropCORS(hdr)
	below := deferredCORSWriter(w)
	if why := misplaced(w); below != nil || why != "" {
		if below != nil {
			why = "under header operations deferred until the response that touch Access-Control-* headers"
			// Answer below the deferring writer, so that its operations
			// do not add their headers to this answer either.
			w = below.(interface{ Unwrap() http.ResponseWriter }).Unwrap()
			dropCORS(w.Header())
		}
		// The API's handler takes the page's path for an account path
		// and would give the page's answers that account's CORS
		// headers, letting its origins read every user's rules; header
		// operations deferred to the response would add theirs after
		// the page has written its own.
		p.logger.Error("the CORS page is "+why+": it refuses every request; move it out from under it (docs/page.md)",
			zap.String("path", r.URL.Path))
		return pageError(w, http.StatusInternalServerError, "the CORS page is misconfigured: see the server's log")
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	id, by, why := p.accountOf(repl)
	audit := writeAudit{logger: p.logger, account: id, by: by, client: clientAddr(r)}
	if why != "" {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			audit.refused(http.StatusForbidden, why)
		} else if ce := p.logger.Check(zapcore.DebugLevel, "CORS page request without an account"); ce != nil {
			ce.Write(zap.String("reason", why), zap.String("account", p.Account))
		}
		if r.URL.Path == "/" && isRead(r) {
			// A person opened the page: say what happened in words.
			return p.serveNoAccount(w)
		}
		return pageError(w, http.StatusForbidden, "no account for this request: %s", why)
	}

	path := r.URL.Path
	if ctype, ok := pageFiles[path]; ok {
		if !isRead(r) {
			return methodNotAllowed(w, "GET, HEAD")
		}
		return p.serveFile(w, path, ctype)
	}
	switch path {
	case "/rules":
		switch {
		case isRead(r):
			return p.getRules(w, r, id)
		case r.Method == http.MethodPut:
			return p.putRules(w, r, id, audit)
		}
		return methodNotAllowed(w, "GET, HEAD, PUT")
	case "/history":
		if !isRead(r) {
			return methodNotAllowed(w, "GET, HEAD")
		}
		return p.getHistory(w, r, id)
	case "/check":
		if !isRead(r) {
			return methodNotAllowed(w, "GET, HEAD")
		}
		return p.checkOrigin(w, r, id)
	}
	return pageError(w, http.StatusNotFound, "not found: %s", path)
}

// misplaced says why w is, or wraps, a writer that would put
// headers on the page's answers it cannot remove: an atomsphere_cors
// handler's, which took the request for an account path, or one that
// buffers the answer to change it afterwards (intercept's handle_response
// routes, templates); "" when it is neither. Caddy's own recorder for
// access logs buffers nothing.
func misplaced(w http.ResponseWriter) string {
	for w := range writerChain(w) {
		if _, ok := w.(*corsWriter); ok {
			return "under a path prefix of an atomsphere_cors handler, which takes its path for an account path"
		}
		if rr, ok := w.(caddyhttp.ResponseRecorder); ok && rr.Buffer() != nil {
			return "under a handler that buffers its answer to change it (intercept, templates)"
		}
	}
	return ""
}

func isRead(r *http.Request) bool { return r.Method == http.MethodGet || r.Method == http.MethodHead }

// accountOf resolves the account placeholder, and who is signed in
// ({http.auth.user.id}, else the account); why says why there is no
// account.
func (p *Page) accountOf(repl *caddy.Replacer) (id, by, why string) {
	if repl == nil {
		return "", "", "no placeholders"
	}
	id, err := repl.ReplaceOrErr(p.Account, true, true)
	if err != nil {
		return "", "", "the account placeholder is empty or unknown (is the user signed in?)"
	}
	if err := policy.CheckAccountID(id); err != nil {
		return "", "", "the account placeholder's value is not an account ID"
	}
	if len(rulestore.EscapeID(id)) > rulestore.MaxKeySegment {
		return "", "", "the account placeholder's value is too long for a store"
	}
	by = id
	if u, ok := repl.GetString("http.auth.user.id"); ok && u != "" {
		by = u
	}
	return id, by, ""
}

// clientAddr is the client's address as Caddy determined it (trusted
// proxies applied), else the connection's.
func clientAddr(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	return r.RemoteAddr
}

func (p *Page) serveFile(w http.ResponseWriter, path, ctype string) error {
	name := "page_assets/index.html"
	if path != "/" {
		name = "page_assets" + path
	}
	b, err := pageAssets.ReadFile(name)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", ctype)
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(b)
	return err
}

// pageRules is the body of GET and PUT /rules; Warning says, after a
// save, what the save could not do besides storing the rules (keep its
// history entry), and after a read, why the rules shown are not the
// stored ones.
type pageRules struct {
	Account string `json:"account"`
	Rules   []Rule `json:"rules"`
	Warning string `json:"warning,omitempty"`
}

// current is the account's rules as the storage holds them, which this
// server then serves (a server that has not polled yet would otherwise
// show older rules than the history, which is read from the storage);
// ok is false while the store has never been loaded here. When the
// storage cannot be read, it is the rules this server serves.
//
// warning, when set, tells the account's user that the rules shown are
// not the stored ones: the storage could not be read (they are this
// server's), or the stored record is refused (no origin is allowed
// until the rules are saved again).
func (p *Page) current(r *http.Request, id string) (rules []Rule, warning string, ok bool) {
	if !p.store.Loaded() {
		return nil, "", false
	}
	rules, err := p.store.ReadAccount(r.Context(), id)
	switch {
	case errors.Is(err, rulestore.ErrRecordRefused):
		p.logger.Error("the CORS page found the account's stored record refused: it allows no origin until it is saved again",
			zap.String("account", id), zap.Error(err))
		warning = "The saved rules could not be read, so no web app is allowed until you save the rules again."
	case err != nil:
		p.logger.Warn("the CORS page shows the rules this server serves: the account could not be read from the store",
			zap.String("account", id), zap.Error(err))
		warning = "The saved rules could not be read just now: these are the rules this server uses. Saving may not work until the store can be read again."
	}
	return rules, warning, true
}

func (p *Page) getRules(w http.ResponseWriter, r *http.Request, id string) error {
	rules, warning, ok := p.current(r, id)
	if !ok {
		return pageError(w, http.StatusServiceUnavailable, "the rules are not loaded on this server yet: try again in a moment")
	}
	w.Header().Set("ETag", rulestore.ETag(id, rules))
	return writeJSON(w, http.StatusOK, pageRules{Account: id, Rules: rules, Warning: warning})
}

// ruleProblem is one validation message in the tenant's words, with the
// rule it concerns (counted from 1; 0 for the account as a whole) and
// the field ("origin", "methods", or "" for the whole rule or account).
// Detail is the message an operator reads in the log, for API clients.
type ruleProblem struct {
	Rule    int    `json:"rule"`
	Field   string `json:"field"`
	Origin  string `json:"origin,omitempty"`
	Message string `json:"message"`
	Detail  string `json:"detail,omitempty"`
}

func (p *Page) putRules(w http.ResponseWriter, r *http.Request, id string, audit writeAudit) error {
	refuse := func(status int, format string, args ...any) error {
		audit.refused(status, fmt.Sprintf(format, args...))
		return pageError(w, status, format, args...)
	}
	if why := crossSite(r); why != "" {
		return refuse(http.StatusForbidden, "cross-site write refused: %s", why)
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return refuse(http.StatusUnsupportedMediaType, "a write needs Content-Type: application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPageBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return refuse(http.StatusRequestEntityTooLarge, "body over %d bytes", maxPageBody)
		}
		return refuse(http.StatusBadRequest, "reading body: %v", err)
	}
	rules, err := policy.DecodeRules(body)
	if err != nil {
		return refuse(http.StatusBadRequest, "body is not a JSON array of rules [{\"origin\": ..., \"methods\": [...]}]: %s", short(err.Error()))
	}
	acct, err := p.store.Compile(id, rules)
	if err != nil {
		audit.refused(http.StatusBadRequest, err.Error())
		return writeJSON(w, http.StatusBadRequest, map[string]any{
			"error": "Not saved: some rules need fixing.", "problems": problemsOf(err, rules)})
	}
	// Counted once merged: the same origin twice is one origin.
	if n := len(acct.Origins); n > p.MaxRules {
		detail := fmt.Sprintf("account %s: %d rules, at most %d", q(id), n, p.MaxRules)
		audit.refused(http.StatusBadRequest, detail)
		msg := fmt.Sprintf("At most %d origins can be allowed: remove %d.", p.MaxRules, n-p.MaxRules)
		return writeJSON(w, http.StatusBadRequest, map[string]any{"error": msg, "problems": []ruleProblem{{Message: msg, Detail: detail}}})
	}
	served := rulestore.RulesOf(*acct)
	e := &rulestore.Edit{ID: id, IfMatch: r.Header.Values("If-Match"), AbsentIsEmpty: true, After: served}
	ans := pageRules{Account: id, Rules: served}
	gap := func(why string) { ans.Warning = why }
	_, err = p.store.Commit(r.Context(), []rulestore.Change{{ID: id, Rules: rules, Acct: acct, Check: e.Check, By: audit.by, HistoryGap: gap}})
	if errors.Is(err, rulestore.ErrUnchanged) {
		// The rules are the stored ones: nothing to write, and no
		// history entry that would push real changes out.
		audit.refused(http.StatusOK, "unchanged: nothing written")
		w.Header().Set("ETag", rulestore.ETag(id, served))
		return writeJSON(w, http.StatusOK, ans)
	}
	if err != nil {
		status := writeStatus(err)
		audit.refused(status, err.Error())
		if status == http.StatusPreconditionFailed {
			// With the account, so that a page showing another account
			// (its user has signed in as this one since) can say so.
			return writeJSON(w, status, map[string]string{"account": id,
				"error": "These rules were changed somewhere else (another tab, or another user of the account) after this page read them. Nothing was saved."})
		}
		// The storage's own words name its paths: they go to the log.
		p.logger.Error("a CORS page write the store did not take", zap.String("account", id), zap.Error(err))
		return pageError(w, status, "The rules could not be saved right now: nothing was changed. Try again in a moment.")
	}
	audit.written(e.Before, served)
	w.Header().Set("ETag", rulestore.ETag(id, served))
	return writeJSON(w, http.StatusOK, ans)
}

// problemsOf lists the problems of a refused account with the rule each
// concerns, for the page to show next to it.
func problemsOf(err error, rules []Rule) []ruleProblem {
	var rep *policy.Report
	if !errors.As(err, &rep) {
		return []ruleProblem{{Message: err.Error()}}
	}
	out := make([]ruleProblem, 0, len(rep.List))
	for _, e := range rep.Problems() {
		pr := ruleProblem{Detail: e.Msg}
		written := ""
		if i := e.At.Rule; i >= 0 && i < len(rules) {
			pr.Rule, pr.Origin, pr.Field = i+1, rules[i].Origin, e.At.Part
			written = rules[i].Origin
		}
		pr.Message = tenantMessage(e, written)
		out = append(out, pr)
	}
	if rep.More > 0 {
		out = append(out, ruleProblem{Message: fmt.Sprintf("And %d more problems.", rep.More)})
	}
	return out
}

// crossSite says why a write must be refused as coming from another
// site, "" when it comes from the page itself or from no browser. A
// browser sends Origin with every PUT (Fetch standard, "append a
// request Origin header") and Sec-Fetch-Site with every request of a
// secure context (https://www.w3.org/TR/fetch-metadata/); clients that
// send neither, such as curl, are not browsers and carry no one else's
// credentials.
func crossSite(r *http.Request) string {
	if site := r.Header.Values("Sec-Fetch-Site"); len(site) > 0 {
		if len(site) > 1 || site[0] != "same-origin" && site[0] != "none" {
			return fmt.Sprintf("Sec-Fetch-Site %s is not same-origin", q(strings.Join(site, ", ")))
		}
	}
	o := r.Header.Values("Origin")
	if len(o) == 0 {
		return ""
	}
	own, err := origin.Parse(pageScheme(r) + "://" + r.Host)
	if len(o) > 1 {
		return "more than one Origin header"
	}
	got, gerr := origin.Parse(o[0])
	if err != nil || gerr != nil || got != own {
		return fmt.Sprintf("Origin %s is not the page's origin", q(o[0]))
	}
	return ""
}

// pageScheme is the scheme the browser used to reach the page: https
// over TLS, or when a proxy that the server trusts (trusted_proxies)
// says so in X-Forwarded-Proto; an untrusted client's say is ignored.
func pageScheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	if trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool); trusted && r.Header.Get("X-Forwarded-Proto") == "https" {
		return "https"
	}
	return "http"
}

func (p *Page) getHistory(w http.ResponseWriter, r *http.Request, id string) error {
	h, err := p.store.ReadHistory(r.Context(), id)
	if errors.Is(err, rulestore.ErrHistoryUnreadable) {
		// Nothing of it decodes: it is set aside at the next save; until
		// then the list is empty, and says why.
		p.logger.Warn("a CORS page history the store holds but cannot decode", zap.String("account", id), zap.Error(err))
		err = nil
	}
	if err != nil {
		// The storage's own words name its paths: they go to the log.
		p.logger.Error("a CORS page history the store could not read", zap.String("account", id), zap.Error(err))
		return pageError(w, http.StatusServiceUnavailable, "The list of recent changes cannot be shown right now. The rules themselves are not affected.")
	}
	return writeJSON(w, http.StatusOK, h)
}

// checkAnswer is the body of GET /check: the account it was decided for,
// the decision, and, when the origin is not one a browser sends, a hint
// in the tenant's words.
type checkAnswer struct {
	Account string `json:"account"`
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason"`
	Hint    string `json:"hint,omitempty"`
}

// checkOrigin answers whether a request to the account's API from an origin
// with a method would be allowed now, as Decide decides the preflight
// that a browser sends first (docs/behaviour.md §2).
func (p *Page) checkOrigin(w http.ResponseWriter, r *http.Request, id string) error {
	qs := r.URL.Query()
	// Each origin and method parameter is one header line, trimmed of
	// spaces and tabs as an HTTP server trims a field value (RFC 9110
	// §5.5): two origins are two Origin lines, which the API refuses.
	origins, methods := qs["origin"], qs["method"]
	if len(origins) == 0 || len(methods) == 0 || origins[0] == "" || methods[0] == "" {
		return pageError(w, http.StatusBadRequest, "origin and method are both required")
	}
	if len(origins) > 2 || len(methods) > 2 {
		return pageError(w, http.StatusBadRequest, "at most two origin and two method parameters")
	}
	hdr := http.Header{}
	for _, o := range origins {
		if len(o) > 2048 {
			return pageError(w, http.StatusBadRequest, "origin or method too long")
		}
		hdr[hdrOrigin] = append(hdr[hdrOrigin], strings.Trim(o, " \t"))
	}
	for _, m := range methods {
		if len(m) > 64 {
			return pageError(w, http.StatusBadRequest, "origin or method too long")
		}
		hdr[hdrReqMethod] = append(hdr[hdrReqMethod], normalizeMethod(strings.Trim(m, " \t")))
	}
	// The preflight a browser sends to the account's API, its target
	// written as a browser writes the account in a URL and read as the
	// server reads a target, so the path guard judges it as it judges
	// the real one.
	target := p.ix.Prefixes()[0] + url.PathEscape(id) + "/"
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return pageError(w, http.StatusBadRequest, "the account cannot be written in a URL: %v", err)
	}
	req := &http.Request{Method: http.MethodOptions, URL: u, RequestURI: target, Header: hdr, Host: r.Host}
	p.current(r, id) // decided on the rules as stored, as GET /rules shows them
	d := p.ix.Decide(req)
	ans := checkAnswer{Account: id, Allowed: d.Allowed(), Reason: d.Reason.String()}
	if len(origins) == 1 && !ans.Allowed {
		ans.Hint = originHint(hdr[hdrOrigin][0])
	}
	switch {
	case ans.Allowed:
		ans.Reason = fmt.Sprintf("the rule for %s allows %s", d.Rule.Origin, d.Rule.Methods.Header)
	case d.Reason == policy.AmbiguousPath:
		ans.Reason = "the API refuses every request for this account ID: a backend could read its path as another account's"
	}
	return writeJSON(w, http.StatusOK, ans)
}

// normalizeMethod upper-cases the methods that the Fetch standard
// normalises ("normalize a method": DELETE, GET, HEAD, OPTIONS, POST,
// PUT, compared case-insensitively), as a browser does before it sends
// one.
func normalizeMethod(m string) string {
	for _, n := range []string{"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"} {
		if strings.EqualFold(m, n) {
			return n
		}
	}
	return m
}

// pageError writes a JSON error body: the page shows its message.
func pageError(w http.ResponseWriter, status int, format string, args ...any) error {
	return writeJSON(w, status, map[string]string{"error": fmt.Sprintf(format, args...)})
}

func methodNotAllowed(w http.ResponseWriter, allow string) error {
	w.Header().Set("Allow", allow)
	return pageError(w, http.StatusMethodNotAllowed, "method not allowed: use %s", allow)
}

var (
	_ caddy.Provisioner           = (*Page)(nil)
	_ caddy.CleanerUpper          = (*Page)(nil)
	_ caddyhttp.MiddlewareHandler = (*Page)(nil)
)
