package atomspherecors

import (
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"atomspherecors/internal/origin"
	"atomspherecors/internal/policy"
)

// The CORS page's account placeholder (docs/page.md, "Whose account"):
// the page writes the account it names, so it must name who is signed
// in. Placeholders whose value the client chooses (the query, a cookie,
// the path, the Host) or that are the same for every request (the
// environment, the system, the time) are never an identity, and are
// refused at load; the others are trusted as set by what runs in front
// of the page, and the page's startup log says which and by what.

// accountPlaceholders lists the placeholders of an account template:
// each {name}, skipping the \{ and \} escapes Caddy's replacer knows.
func accountPlaceholders(tmpl string) []string {
	names, _ := splitTemplate(tmpl)
	return names
}

// splitTemplate is accountPlaceholders, and the text written around the
// placeholders.
func splitTemplate(tmpl string) (names []string, literal string) {
	var lit strings.Builder
	for i := 0; i < len(tmpl); i++ {
		switch tmpl[i] {
		case '\\':
			lit.WriteByte(tmpl[i])
			if i+1 < len(tmpl) {
				i++
				lit.WriteByte(tmpl[i])
			}
		case '{':
			end := strings.IndexByte(tmpl[i+1:], '}')
			if end < 0 {
				lit.WriteString(tmpl[i:])
				return names, lit.String()
			}
			names = append(names, tmpl[i+1:i+1+end])
			i += end + 1
		default:
			lit.WriteByte(tmpl[i])
		}
	}
	return names, lit.String()
}

// neverIdentity is the prefixes of placeholders whose value the client
// chooses, or that are one value for every user; each with the reason.
var neverIdentity = []struct{ prefix, why string }{
	{"http.request.uri", "the client chooses the URL"},
	{"http.request.orig_uri", "the client chooses the URL"},
	{"http.request.orig_method", "the client chooses the method"},
	{"http.request.cookie.", "the client chooses its cookies (a signed-in session is checked by an authentication handler, which sets an identity placeholder or header)"},
	{"http.request.host", "the client chooses the Host"},
	{"http.request.port", "the client chooses the port"},
	{"http.request.method", "the client chooses the method"},
	{"http.request.scheme", "the client chooses the scheme"},
	{"http.request.proto", "the client chooses the protocol"},
	{"http.request.remote", "a client address is not a user"},
	{"http.request.local", "the server's address is the same for every user"},
	{"http.request.body", "the client chooses the body"},
	{"http.request.uuid", "it is new for every request"},
	{"http.request.header.cookie", "the client chooses its cookies"},
	{"http.request.header.proxy-", "it is the client's credentials for a proxy, not the verified user"},
	{"http.request.header.sec-", "the client's browser sets it"},
	{"http.request.header.content-", "it describes the request's body"},
	{"http.request.header.if-", "it is a condition of the request"},
	{"http.request.header.accept", "the client's browser sets it"},
	{"http.vars.client_ip", "it is the client's address, not a user"},
	{"http.vars.trusted_proxy", "it says whether a proxy is trusted, not who is signed in"},
	{"http.vars.root", "it is the site's root directory, the same for every request"},
	{"http.matchers.", "a matcher takes it from the request the client sends"},
	{"http.request.duration", "it is not a user"},
	{"http.error.", "it is not a user"},
	{"http.response.", "it is not a user"},
	{"env.", "it is the same for every request"},
	{"system.", "it is the same for every request"},
	{"time.", "it is the time, not a user"},
	{"file.", "it is the same for every request"},
}

// identityPlaceholders are the placeholder namespaces that can carry a
// verified identity, as Caddy spells them (placeholders are
// case-sensitive): what an authentication handler sets, a request
// header that one copies in, a verified client certificate, a variable
// set from one. Any other placeholder is refused: it is never set from
// a signed-in user, or it never resolves.
var identityPlaceholders = []string{"http.auth.user.", "http.request.header.", "http.request.tls.client.", "http.vars."}

// neverIdentityHeaders are request headers, by their whole name in
// lower case, that carry what the client or a proxy says of the request,
// never who is signed in; each with the reason.
var neverIdentityHeaders = map[string]string{
	"authorization":   "it is the client's credentials, not the verified user (use {http.auth.user.id})",
	"host":            "the client chooses the Host",
	"origin":          "the client's page chooses it",
	"referer":         "the client chooses it",
	"user-agent":      "the client chooses it",
	"x-forwarded-for": "it is the client's address", "x-real-ip": "it is the client's address",
	"forwarded": "it is the client's address", "x-client-ip": "it is the client's address",
	"true-client-ip": "it is the client's address", "cf-connecting-ip": "it is the client's address",
	"x-forwarded-host": "it is what a proxy says of the request", "x-forwarded-proto": "it is what a proxy says of the request",
	"x-forwarded-port": "it is what a proxy says of the request", "x-forwarded-prefix": "it is what a proxy says of the request",
	"x-forwarded-uri": "it is what a proxy says of the request", "x-original-url": "the client chooses the URL",
	"x-rewrite-url": "the client chooses the URL", "x-http-method-override": "the client chooses the method",
	"via": "it is what proxies say of the request", "connection": "it is about the connection",
	"upgrade": "it is about the connection", "te": "it is about the connection", "priority": "the client's browser sets it",
	"early-data": "it is about the connection", "cache-control": "the client chooses it", "pragma": "the client chooses it",
	"dnt": "the client's browser sets it", "range": "the client chooses it",
	"x-original-host": "the client chooses the Host", "x-host": "the client chooses the Host",
	"x-forwarded-server": "it is what a proxy says of the request", "x-original-uri": "the client chooses the URL",
	"x-forwarded-path": "the client chooses the URL", "x-envoy-original-path": "the client chooses the URL",
	"x-forwarded-scheme": "it is what a proxy says of the request", "x-scheme": "it is what a proxy says of the request",
	"x-url-scheme": "it is what a proxy says of the request", "front-end-https": "it is what a proxy says of the request",
	"x-original-forwarded-for": "it is the client's address", "x-cluster-client-ip": "it is the client's address",
	"fastly-client-ip": "it is the client's address", "x-proxyuser-ip": "it is the client's address",
	"forwarded-for": "it is the client's address", "x-forwarded": "it is the client's address",
	"x-http-method": "the client chooses the method", "x-method-override": "the client chooses the method",
	"transfer-encoding": "it is about the connection", "keep-alive": "it is about the connection",
	"trailer": "it is about the connection", "expect": "the client chooses it", "max-forwards": "the client chooses it",
	"access-control-request-method": "the client's browser sets it", "access-control-request-headers": "the client's browser sets it",
}

// checkAccountTemplate refuses an account template with no placeholder
// or with one that is never an identity.
func checkAccountTemplate(tmpl string) error {
	names, literal := splitTemplate(tmpl)
	if len(names) == 0 {
		return fmt.Errorf("account %s has no placeholder: every user would edit that one account; use a placeholder such as {http.auth.user.id}", q(tmpl))
	}
	if strings.TrimSpace(tmpl) != tmpl {
		return fmt.Errorf("account %s has white space around it, which would become part of every account ID", q(tmpl))
	}
	if strings.Contains(literal, "/") {
		return fmt.Errorf("account %s has a / outside its placeholders: no account ID has one, so every request would be refused", q(tmpl))
	}
	for _, n := range names {
		if i := strings.IndexFunc(n, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '_' || r == '-')
		}); i >= 0 {
			return fmt.Errorf("account %s: the placeholder {%s} never resolves: a placeholder's name has letters, digits, '.', '_' and '-' only", q(tmpl), n)
		}
		lower := strings.ToLower(n)
		if why := neverIdentityWhy(lower); why != "" {
			return fmt.Errorf("account %s: the placeholder {%s} is not who is signed in (%s): use one that an authentication handler sets, such as {http.auth.user.id}", q(tmpl), n, why)
		}
		known := false
		for _, ns := range identityPlaceholders {
			if !strings.HasPrefix(lower, ns) {
				continue
			}
			rest := n[len(ns):]
			switch {
			case rest == "":
				return fmt.Errorf("account %s: the placeholder {%s} never resolves: name a field, such as {http.auth.user.id}", q(tmpl), n)
			case !strings.HasPrefix(n, ns):
				if strings.EqualFold(rest, "id") {
					rest = "id"
				}
				return fmt.Errorf("account %s: the placeholder {%s} never resolves: placeholders are case-sensitive, write {%s%s}", q(tmpl), n, ns, rest)
			}
			known = true
		}
		if !known {
			return fmt.Errorf("account %s: the placeholder {%s} is not who is signed in: use one that an authentication handler sets, such as {http.auth.user.id} (basic_auth) or {http.request.header.X-Account} (forward_auth's copy_headers)", q(tmpl), n)
		}
	}
	return nil
}

// neverIdentityWhy says why a placeholder, its name lower-cased, is
// never who is signed in; "" when it may be.
func neverIdentityWhy(lower string) string {
	if h, ok := strings.CutPrefix(lower, "http.request.header."); ok {
		if why, never := neverIdentityHeaders[h]; never {
			return why
		}
	}
	for _, ni := range neverIdentity {
		if strings.HasPrefix(lower, ni.prefix) {
			return ni.why
		}
	}
	return ""
}

// checkClientCerts refuses an account template that names the client's
// certificate ({http.request.tls.client.*}) on a server whose TLS
// connection policies do not all verify client certificates: with
// client_auth mode request or require (the default without a trust
// pool), Caddy takes any certificate the client makes, so its subject
// names whatever account the client likes.
func checkClientCerts(tmpl string, srv *caddyhttp.Server) error {
	var name string
	for _, n := range accountPlaceholders(tmpl) {
		if strings.HasPrefix(n, "http.request.tls.client.") {
			name = n
		}
	}
	if name == "" {
		return nil
	}
	if srv == nil || len(srv.TLSConnPolicies) == 0 {
		return fmt.Errorf("account %s: the placeholder {%s} names a client certificate, but the server does not authenticate clients by certificate (client_auth with mode require_and_verify and a trust_pool)", q(tmpl), name)
	}
	for i, pol := range srv.TLSConnPolicies {
		ca := pol.ClientAuthentication
		verifies := ca != nil && (ca.Mode == "require_and_verify" || ca.Mode == "verify_if_given" ||
			ca.Mode == "" && (len(ca.TrustedCACerts) > 0 || len(ca.TrustedCACertPEMFiles) > 0 || len(ca.TrustedLeafCerts) > 0 || ca.CARaw != nil))
		if !verifies {
			mode := "none"
			if ca != nil {
				mode = ca.Mode
				if mode == "" {
					mode = "require (the default without a trust_pool)"
				}
			}
			return fmt.Errorf("account %s: the placeholder {%s} names a client certificate, but TLS connection policy %d of the server does not verify client certificates (client_auth mode %s), so a client's own certificate names any account: use mode require_and_verify with a trust_pool", q(tmpl), name, i, mode)
		}
	}
	return nil
}

// trustedBy says, for the page's startup log, what the page relies on to
// set a placeholder of its account template.
func trustedBy(name string) string {
	lower := strings.ToLower(name)
	switch {
	case strings.HasPrefix(lower, "http.auth.user."):
		return "the authentication handler in front of the page (basic_auth, or another that signs users in); no vars or map in front of the page may set it"
	case strings.HasPrefix(lower, "http.request.header."):
		return "the handler in front of the page that sets this request header for a signed-in user (forward_auth's copy_headers, request_header): without it, or if clients' own values of the header reach the page, any client writes any account"
	case strings.HasPrefix(lower, "http.request.tls.client."):
		return "the client certificate, verified by the server's client_auth (checked at load: every TLS connection policy verifies)"
	}
	return "the vars or map handler in front of the page that sets this variable: it must set it from a verified identity ({http.auth.user.id}, a header forward_auth copies), never from the request (query, cookie, path), or any client writes any account"
}

// noAccountPage is what a person who opens the page gets when the site
// signed nobody in to an account: the reason in words, not JSON.
const noAccountPage = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>CORS: not signed in</title></head>
<body><main>
<h1>You are not signed in to an account</h1>
<p>This page shows the web apps allowed to call an account's API, but the site did not tell it which account
you are signed in to. Sign in again; if this keeps happening, ask the site's operator (the server's debug log says why).</p>
</main></body>
</html>
`

func (p *Page) serveNoAccount(w http.ResponseWriter) error {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusForbidden)
	_, err := io.WriteString(w, noAccountPage)
	return err
}

// originPart is the scheme, host and port of an origin written with a
// path, query or fragment after them: what the user meant; "" when it
// has no scheme and host to take.
func originPart(written string) string {
	scheme, after, ok := strings.Cut(written, "://")
	if !ok || scheme == "" {
		return ""
	}
	host, _, _ := strings.Cut(after, "/")
	host, _, _ = strings.Cut(host, "?")
	host, _, _ = strings.Cut(host, "#")
	if host == "" || len(written) > 200 {
		return ""
	}
	return scheme + "://" + host
}

// tenantMessage words one problem of a refused save for the account's
// user, who may never have heard of CORS: what to write instead, not the
// rule's place in a config (which the audit log keeps).
// written is the rule's origin as the user wrote it.
func tenantMessage(pr policy.Problem, written string) string {
	msg := pr.Err.Error()
	has := func(s string) bool { return strings.Contains(msg, s) }
	switch pr.At.Part {
	case "origin":
		return originMessage(msg, written)
	case "methods":
		switch {
		case has("methods is empty"):
			return "Choose at least one method."
		case has("wildcard"):
			return "List each method: * is not supported."
		case has("cannot be allowed"):
			return "OPTIONS, CONNECT and TRACE cannot be allowed: browsers send OPTIONS themselves, and never send the other two."
		}
		return "Use HTTP method names such as GET, POST, PUT, PATCH or DELETE."
	}
	if has("too long for a store") {
		return "This account's ID is too long to store rules for: ask the site's operator."
	}
	return "These rules cannot be saved: " + msg
}

// originMessage words a problem of an origin as written for the
// account's user; msg is the problem's message.
func originMessage(msg, written string) string {
	has := func(s string) bool { return strings.Contains(msg, s) }
	switch {
	case has("form scheme://host"):
		return "Write the origin as https://host or http://host:port, such as https://app.example.com."
	case has("is not http or https"):
		return "An origin starts with https:// (or http:// for a local test server), such as https://app.example.com."
	case has("origin is empty"):
		return "Enter the web app's origin, such as https://app.example.com."
	case has("wildcard"):
		return "List each web app's origin as a rule of its own: * patterns are not supported."
	case has(`"null"`):
		return `"null" is not an origin that can be allowed: enter the web app's origin, such as https://app.example.com.`
	case has("must not have a path"), has("must not have a query"), has("must not have a fragment"):
		if o := originPart(written); o != "" {
			return "Write only the start of the address, without a path: " + o + "."
		}
		return "Write only the start of the address, without a path: such as https://app.example.com, not https://app.example.com/page."
	case has("end with a dot"):
		return "Write the host without the dot at its end, such as https://app.example.com: an origin with the dot never matches a rule."
	case has("user info"):
		return "Remove the user name and @ from the origin: write https://app.example.com."
	case has("port"):
		return "The port after the colon must be a number from 1 to 65535, such as http://localhost:8080."
	}
	return "This is not a valid web address: write the origin as your browser's address bar shows it, such as https://app.example.com."
}

// originHint is, for GET /check, what to write instead of an origin no
// browser sends ("localhost:8080", "https://app.example.com/"); "" for
// one a browser may send.
func originHint(o string) string {
	if _, err := origin.Parse(o); err != nil {
		return "This is not an origin a browser sends. " + originMessage(err.Error(), o)
	}
	return ""
}
