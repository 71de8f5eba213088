package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
)

// Rule allows one origin to call an account's API with some methods.
type Rule struct {
	// The origin allowed to call the account's API from a browser:
	// scheme (http or https), host and optional port, such as
	// "https://mydomain.com" or "http://localhost:8080". No path,
	// query, fragment, user info, wildcard or "null". Scheme and host
	// are compared case-insensitively, an international host matches
	// its punycode form, and an explicit default port (:443 for https,
	// :80 for http) is the same as none.
	Origin string `json:"origin"`

	// The HTTP methods this origin may use, upper-cased on load.
	// Default: GET, POST and DELETE. OPTIONS, CONNECT, TRACE and "*"
	// are refused. A request for HEAD is allowed where GET is.
	Methods []string `json:"methods,omitempty"`
}

// defaultMethods is the method set of the AtomSphere API documentation, used by a
// rule that lists none.
var defaultMethods = []string{"GET", "POST", "DELETE"}

// DefaultPathPrefixes are the AtomSphere API and Partner API roots.
var DefaultPathPrefixes = []string{"/api/rest/v1/", "/partner/api/rest/v1/"}

// DefaultAllowHeaders is the Access-Control-Allow-Headers list of the
// AtomSphere API documentation, in its order.
var DefaultAllowHeaders = []string{
	"cache-control", "content-type", "expires", "last-modified",
	"accept", "content-language", "authorization", "pragma",
}

const (
	defaultPreflightStatus = 204
	defaultMaxAgeSeconds   = 3600
)

// forbiddenMethods can never be allowed: OPTIONS is the preflight itself,
// CONNECT and TRACE are forbidden methods in the Fetch standard.
var forbiddenMethods = map[string]bool{"OPTIONS": true, "CONNECT": true, "TRACE": true}

// knownMethods is the IANA HTTP Method Registry, less forbiddenMethods.
var knownMethods = map[string]bool{
	"ACL": true, "BASELINE-CONTROL": true, "BIND": true, "CHECKIN": true, "CHECKOUT": true,
	"COPY": true, "DELETE": true, "GET": true, "HEAD": true, "LABEL": true, "LINK": true,
	"LOCK": true, "MERGE": true, "MKACTIVITY": true, "MKCALENDAR": true, "MKCOL": true,
	"MKREDIRECTREF": true, "MKWORKSPACE": true, "MOVE": true, "ORDERPATCH": true,
	"PATCH": true, "POST": true, "PRI": true, "PROPFIND": true, "PROPPATCH": true, "PUT": true,
	"QUERY": true, "REBIND": true, "REPORT": true, "SEARCH": true, "UNBIND": true,
	"UNCHECKOUT": true, "UNLINK": true, "UNLOCK": true, "UPDATE": true,
	"UPDATEREDIRECTREF": true, "VERSION-CONTROL": true,
}

// parseMethods upper-cases and checks a rule's methods, dropping
// repeats. A rule without methods (nil) has the default GET, POST,
// DELETE; an explicit empty list is refused, since it would otherwise
// allow those three.
func parseMethods(ms []string) ([]string, []error) {
	if ms == nil {
		return defaultMethods, nil
	}
	if len(ms) == 0 {
		return nil, []error{errors.New("methods is empty: omit it for the default GET, POST and DELETE")}
	}
	out := make([]string, 0, min(len(ms), len(knownMethods)))
	var errs []error
	for _, m := range ms {
		u := strings.ToUpper(m)
		switch {
		case m == "*":
			errs = append(errs, errors.New(`the wildcard method "*" is not supported; list each method`))
		case forbiddenMethods[u]:
			errs = append(errs, fmt.Errorf("method %s cannot be allowed", q(m)))
		case !knownMethods[u]:
			errs = append(errs, fmt.Errorf("method %s is not a known HTTP method", q(m)))
		case !slices.Contains(out, u): // out holds known methods only: a short list
			out = append(out, u)
		}
	}
	return out, errs
}

// checkPathPrefix refuses a prefix that a cleaned request path could
// never start with as intended. Prefixes are compared with the decoded
// path, so an escape or a wildcard in one could never match.
func checkPathPrefix(p string, guard bool) error {
	switch {
	case !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/"):
		return fmt.Errorf("path prefix %s must start and end with /", q(p))
	case needsCleaning(p):
		return fmt.Errorf("path prefix %s must be a clean path (no //, . or .. segments)", q(p))
	case strings.ContainsAny(p, "{}"):
		return fmt.Errorf("path prefix %s: placeholders are not expanded here (in a Caddyfile, {$VAR} reads an environment variable)", q(p))
	case strings.ContainsAny(p, "%*"):
		return fmt.Errorf("path prefix %s: prefixes are compared with the decoded path, so write it decoded, without %% escapes or * wildcards", q(p))
	case guard && (hasGuardedByte(p) || strings.Contains(p, "./")):
		return fmt.Errorf("path prefix %s has a byte some backends read differently (%s) or a segment that ends in a dot: "+
			"the path guard would refuse every request under it with 400; choose another prefix, or set disable_path_guard", q(p), guardedBytesText)
	}
	return nil
}

// guardedBytesText names the bytes of guardedByte, for error messages.
const guardedBytesText = "';', '#', '?', '\\', a space, a control character, a byte over 0x7f"

// checkPathPrefixes checks each prefix and returns them lower-cased, in
// order, less the refused ones. A prefix that an earlier one always
// matches first (it starts with the earlier one, in any case) could
// never be used, and is refused naming both.
func checkPathPrefixes(prefixes []string, guard bool, p *Problems) []string {
	out := make([]string, 0, len(prefixes))
	type entry struct {
		lower string
		index int // in prefixes
	}
	var ok []entry
	for i, pre := range prefixes {
		if err := checkPathPrefix(pre, guard); err != nil {
			p.Add(Place{Field: "path_prefixes"}, err)
			continue
		}
		ok = append(ok, entry{strings.ToLower(pre), i})
	}
	// In sorted order, the prefixes that a prefix starts with come
	// before it, and form a chain: a stack holds that chain, with the
	// first-configured of each, so the check is linear after the sort.
	sorted := slices.Clone(ok)
	slices.SortStableFunc(sorted, func(a, b entry) int { return strings.Compare(a.lower, b.lower) })
	type link struct {
		lower string
		first int // the earliest configured index among the chain so far
	}
	var chain []link
	shadowed := make(map[int]int) // index -> index of the earlier prefix
	for _, e := range sorted {
		for len(chain) > 0 && !strings.HasPrefix(e.lower, chain[len(chain)-1].lower) {
			chain = chain[:len(chain)-1]
		}
		first := e.index
		if len(chain) > 0 {
			if f := chain[len(chain)-1].first; f < e.index {
				shadowed[e.index] = f
			}
			first = min(first, chain[len(chain)-1].first)
		}
		chain = append(chain, link{e.lower, first})
	}
	for _, e := range ok {
		if j, bad := shadowed[e.index]; bad {
			p.Add(Place{Field: "path_prefixes"}, fmt.Errorf("path prefix %s is never used: the earlier prefix %s matches every path it would",
				q(prefixes[e.index]), q(prefixes[j])))
			continue
		}
		out = append(out, e.lower)
	}
	return out
}

// CheckAccountID refuses an account ID that could never be a single
// segment of a cleaned request path.
func CheckAccountID(id string) error {
	switch {
	case id == "":
		return errors.New("account ID is empty")
	case strings.Contains(id, "/"):
		return fmt.Errorf("account %s: account ID must not contain /", q(id))
	case id == "." || id == "..":
		return fmt.Errorf("account %s: account ID must not be a dot segment", q(id))
	case strings.ContainsAny(id, "{}"):
		return fmt.Errorf("account %s: placeholders are not expanded in account IDs (in a Caddyfile, {$VAR} reads an environment variable)", q(id))
	case !utf8.ValidString(id):
		return fmt.Errorf("account %s: account ID is not valid UTF-8", q(id))
	}
	return nil
}

// checkHeaderNames lower-cases and checks a list of header names for
// allow_headers or expose_headers, dropping repeats, in linear time.
func checkHeaderNames(field string, names []string, p *Problems) []string {
	out := make([]string, 0, len(names))
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		l := strings.ToLower(n)
		switch {
		case n == "*":
			p.Add(Place{Field: field}, fmt.Errorf(`%s: "*" is not a wildcard when credentials are allowed; list each header`, field))
		case !httpguts.ValidHeaderFieldName(n):
			if p.full() {
				p.Skip()
				continue
			}
			p.Add(Place{Field: field}, fmt.Errorf("%s: %s is not a valid header name", field, q(n)))
		case !seen[l]:
			seen[l] = true
			out = append(out, l)
		}
	}
	return out
}

// checkMaxAge refuses a negative max_age, and a positive one under a
// second: it would be sent as 0, and in JSON it is usually a number of
// seconds written where Caddy reads nanoseconds.
func checkMaxAge(d time.Duration) error {
	switch {
	case d < 0:
		return fmt.Errorf("max_age %s is negative", d)
	case d > 0 && d < time.Second:
		return fmt.Errorf(`max_age %s is under one second, and would be sent as 0: a JSON number is nanoseconds, so write a duration such as "3600s" or "1h"`, d)
	}
	return nil
}

func checkPreflightStatus(s int) error {
	if s < 200 || s > 299 {
		return fmt.Errorf("preflight_status %d is outside 200-299", s)
	}
	return nil
}

// ruleErr says where a rule's problem is: the account, the rule's
// position counted from 1 as a person counts the lines of a block (the
// admin API path index is one less), and the origin as written.
func ruleErr(account string, i int, o string, err error) error {
	return fmt.Errorf("account %s, rule %d (origin %s): %w", q(account), i+1, q(o), err)
}
