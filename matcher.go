package atomspherecors

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// index is the compiled form of a Handler's config, built once by
// Provision and only read afterwards, so requests share it without locks.
// A config reload builds a new Handler with a new index.
type index struct {
	prefixes []string           // lower-cased, in configured order
	accounts map[string]account // account ID -> its allowed origins

	// maxOriginLen bounds the Origin values worth parsing: no longer
	// value can normalise to a configured origin (see compile).
	maxOriginLen int

	status        int    // preflight_status
	allowHeaders  string // Access-Control-Allow-Headers, "" to omit
	exposeHeaders string // Access-Control-Expose-Headers, "" to omit
	maxAge        string // Access-Control-Max-Age, whole seconds
}

// account holds one account's allowed origins, rules with the same
// origin merged. Small accounts are scanned; large ones also get a map.
type account struct {
	origins  []allowedOrigin
	byOrigin map[string]*allowedOrigin // nil below mapThreshold origins
}

// mapThreshold is the number of origins from which an account's origins
// are looked up in a map instead of a scan: a scan of a few strings,
// most of them rejected on length, is faster than hashing.
const mapThreshold = 8

// allowedOrigin is one normalised origin and the methods it may use.
type allowedOrigin struct {
	origin  string // canonical serialisation, e.g. "https://mydomain.com"
	methods *methodSet
}

// methodSet is shared by every origin with the same methods, so a large
// config holds each distinct set and its header value once.
type methodSet struct {
	list   []string
	header string // Access-Control-Allow-Methods value, "GET, POST, DELETE"
}

// allows compares a method case-sensitively, as the Fetch standard
// compares a request's method with Access-Control-Allow-Methods.
func (m *methodSet) allows(method string) bool {
	// HEAD is treated as GET (contract §3).
	return contains(m.list, method) || (method == "HEAD" && contains(m.list, "GET"))
}

// accountOf returns the account a request path belongs to: the segment
// right after the first configured prefix that the cleaned path starts
// with (contract §3). ok is false outside the prefixes and for an empty
// account segment.
func (ix *index) accountOf(p string) (id string, ok bool) {
	if needsCleaning(p) {
		// Read the path as Caddy's path matchers do: dot-segments
		// resolved, repeated slashes merged.
		p = caddyhttp.CleanPath(p, true)
	}
	for _, pre := range ix.prefixes {
		if len(p) < len(pre) || !asciiEqualFold(p[:len(pre)], pre) {
			continue
		}
		rest := p[len(pre):]
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			rest = rest[:i]
		}
		return rest, rest != ""
	}
	return "", false
}

// needsCleaning reports whether caddyhttp.CleanPath could change p:
// only a repeated slash or a "." or ".." segment can. Most paths are
// clean, and checking is cheaper than cleaning.
func needsCleaning(p string) bool {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		next := p[i+1:]
		if next == "" {
			return false
		}
		switch {
		case next[0] == '/':
			return true
		case next[0] != '.':
			continue
		case len(next) == 1 || next[1] == '/':
			return true // "/."
		case next[1] == '.' && (len(next) == 2 || next[2] == '/'):
			return true // "/.."
		}
	}
	return false
}

// asciiEqualFold compares ASCII case-insensitively, the way Caddy's path
// matchers compare paths (they lower-case both sides).
func asciiEqualFold(s, lower string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// match finds the rule of acct for the request's Origin values. A
// missing, repeated, null, malformed or too long Origin matches nothing
// (contract §3). reason says why not, for the debug log.
func (ix *index) match(acct *account, originHdr []string) (*allowedOrigin, string) {
	if len(acct.origins) == 0 {
		return nil, "account has no rules"
	}
	switch len(originHdr) {
	case 0:
		return nil, "no Origin header"
	case 1:
	default:
		return nil, "repeated Origin header"
	}
	o := originHdr[0]
	// Browsers send origins already serialised (Fetch standard), so the
	// exact string is nearly always the one to look for.
	if ao := acct.find(o); ao != nil {
		return ao, ""
	}
	if len(o) > ix.maxOriginLen {
		return nil, "origin not allowed"
	}
	parsed, err := parseOrigin(o)
	if err != nil {
		return nil, "malformed Origin header"
	}
	if canon := parsed.String(); canon != o {
		if ao := acct.find(canon); ao != nil {
			return ao, ""
		}
	}
	return nil, "origin not allowed"
}

func (a *account) find(o string) *allowedOrigin {
	if a.byOrigin != nil {
		return a.byOrigin[o]
	}
	for i := range a.origins {
		if a.origins[i].origin == o {
			return &a.origins[i]
		}
	}
	return nil
}

// newIndex checks a whole config and compiles it, reporting every
// problem at once (errors.Join), each naming where it is.
func newIndex(h *Handler) (*index, error) {
	var errs []error
	ix := &index{status: h.PreflightStatus, accounts: make(map[string]account, len(h.Accounts))}

	prefixes := h.PathPrefixes
	if prefixes == nil {
		prefixes = defaultPathPrefixes
	} else if len(prefixes) == 0 {
		errs = append(errs, errors.New("path_prefixes is empty: no request would be checked"))
	}
	for _, p := range prefixes {
		if err := checkPathPrefix(p); err != nil {
			errs = append(errs, err)
			continue
		}
		ix.prefixes = append(ix.prefixes, strings.ToLower(p))
	}

	allow := h.AllowHeaders
	if allow == nil {
		allow = defaultAllowHeaders
	}
	allow, herrs := checkHeaderNames("allow_headers", allow)
	errs = append(errs, herrs...)
	ix.allowHeaders = strings.Join(allow, ",")
	expose, herrs := checkHeaderNames("expose_headers", h.ExposeHeaders)
	errs = append(errs, herrs...)
	ix.exposeHeaders = strings.Join(expose, ",")

	if ix.status == 0 {
		ix.status = defaultPreflightStatus
	}
	if err := checkPreflightStatus(ix.status); err != nil {
		errs = append(errs, err)
	}
	maxAge := int64(defaultMaxAgeSeconds)
	if h.MaxAge != nil {
		if *h.MaxAge < 0 {
			errs = append(errs, fmt.Errorf("max_age %s is negative", time.Duration(*h.MaxAge)))
		}
		maxAge = int64(time.Duration(*h.MaxAge) / time.Second)
	}
	ix.maxAge = strconv.FormatInt(maxAge, 10)

	sets := make(map[string]*methodSet)
	longest := 0
	for id, rules := range h.Accounts {
		if err := checkAccountID(id); err != nil {
			errs = append(errs, err)
			continue
		}
		acct, aerrs := compileAccount(id, rules, sets)
		errs = append(errs, aerrs...)
		for _, ao := range acct.origins {
			longest = max(longest, len(ao.origin))
		}
		ix.accounts[id] = acct
	}
	// A non-canonical spelling of an origin is at most the length of its
	// canonical form with an explicit default port, or its Unicode host
	// at up to 4 bytes a character: nothing longer can match.
	ix.maxOriginLen = 4*longest + len(":65535")

	if len(errs) > 0 {
		// Map order is random: sort so the same config gives the same report.
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
		return nil, errors.Join(errs...)
	}
	return ix, nil
}

// compileAccount normalises one account's rules, merging rules with the
// same origin (their methods united, in the order first written).
func compileAccount(id string, rules []Rule, sets map[string]*methodSet) (account, []error) {
	var errs []error
	lists := make([][]string, 0, len(rules))
	origins := make([]string, 0, len(rules))
	var pos map[string]int // origin -> position, for large accounts only
	if len(rules) > mapThreshold {
		pos = make(map[string]int, len(rules))
	}
	for i, r := range rules {
		o, err := parseOrigin(r.Origin)
		if err != nil {
			errs = append(errs, ruleErr(id, i, r.Origin, err))
		}
		methods, merrs := parseMethods(r.Methods)
		for _, e := range merrs {
			errs = append(errs, ruleErr(id, i, r.Origin, e))
		}
		if err != nil || merrs != nil {
			continue
		}
		canon := o.String()
		if canon == r.Origin {
			canon = r.Origin // keep one copy of the string, not two
		}
		j := -1
		if pos != nil {
			if k, ok := pos[canon]; ok {
				j = k
			}
		} else {
			j = slices.Index(origins, canon)
		}
		if j < 0 {
			if pos != nil {
				pos[canon] = len(origins)
			}
			origins = append(origins, canon)
			lists = append(lists, methods)
			continue
		}
		for _, m := range methods {
			if !contains(lists[j], m) {
				lists[j] = append(slices.Clip(lists[j]), m)
			}
		}
	}

	acct := account{origins: make([]allowedOrigin, len(origins))}
	for i, o := range origins {
		header := strings.Join(lists[i], ", ")
		set := sets[header]
		if set == nil {
			set = &methodSet{list: lists[i], header: header}
			sets[header] = set
		}
		acct.origins[i] = allowedOrigin{origin: o, methods: set}
	}
	if len(acct.origins) > mapThreshold {
		acct.byOrigin = make(map[string]*allowedOrigin, len(acct.origins))
		for i := range acct.origins {
			acct.byOrigin[acct.origins[i].origin] = &acct.origins[i]
		}
	}
	return acct, errs
}
