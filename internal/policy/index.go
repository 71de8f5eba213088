package policy

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"atomspherecors/internal/origin"
)

// Index is the compiled form of a Handler's config, built once by
// Provision from a Config and never changed afterwards (every field is
// unexported and set by NewIndex alone), so requests share it without
// locks. A config reload builds a new Handler with a new index.
type Index struct {
	prefixes []string // lower-cased, in configured order
	// plainPrefix is, for each prefix with no dot and no guarded byte,
	// how many leading bytes of a path that starts with it exactly need no
	// look by plainPath: all but its final "/", so that a "//" after it is
	// seen; 0 for any other prefix.
	plainPrefix []int
	// prefixSegs are the segments of each prefix, for the path guard.
	prefixSegs [][]string
	// foldKeys counts, by fold key, the configured account IDs that are
	// not their own (not lower-case ASCII), so that two that fold to one
	// are told apart (sameLetters); nil for a store's accounts.
	foldKeys map[string]int
	guard    bool               // Config.PathGuard
	rewrites bool               // Config.Rewrites
	accounts map[string]Account // account ID -> its allowed origins

	// maxOriginLen bounds the Origin values worth parsing: no longer
	// value can normalise to a configured origin (see compile).
	maxOriginLen int

	status        int    // preflight_status
	allowHeaders  string // Access-Control-Allow-Headers, "" to omit
	exposeHeaders string // Access-Control-Expose-Headers, "" to omit
	maxAge        string // Access-Control-Max-Age, whole seconds

	live Source // Config.Live

	clean    func(string) string                      // Config.CleanPath
	original func(*http.Request) (http.Request, bool) // Config.OriginalRequest
}

// Prefixes are the path prefixes, lower-cased, in their configured order.
func (ix *Index) Prefixes() []string { return ix.prefixes }

// Status is the status of an allowed preflight (preflight_status).
func (ix *Index) Status() int { return ix.status }

// AllowHeaders is the Access-Control-Allow-Headers value, "" to omit.
func (ix *Index) AllowHeaders() string { return ix.allowHeaders }

// ExposeHeaders is the Access-Control-Expose-Headers value, "" to omit.
func (ix *Index) ExposeHeaders() string { return ix.exposeHeaders }

// MaxAge is the Access-Control-Max-Age value, whole seconds.
func (ix *Index) MaxAge() string { return ix.maxAge }

// MaxOriginLen is the length over which an Origin value is refused
// unparsed: nothing longer normalises to an allowed origin.
func (ix *Index) MaxOriginLen() int { return ix.maxOriginLen }

// Live is the source of the accounts of a handler with a rules store;
// nil for inline accounts.
func (ix *Index) Live() Source { return ix.live }

// MaxAnyOriginLen bounds the Origin values worth parsing for accounts
// that change while the index serves (a rules store's): the longest
// canonical origin a rule can have (a 253-character host with a port),
// spelled with an explicit default port and a Unicode host, as NewIndex
// bounds inline accounts.
var MaxAnyOriginLen = 4*len("https://"+strings.Repeat("h", 253)+":65535") + len(":65535")

// cleanPath is p as the server's path matchers read it. Most paths are
// clean already, and checking is cheaper than cleaning.
func (ix *Index) cleanPath(p string) string {
	if needsCleaning(p) {
		return ix.clean(p)
	}
	return p
}

// Source gives the accounts of a rules store, which change while the
// index serves requests: Account is called once per request on an
// account path, from many goroutines, and must not block.
type Source interface {
	Account(id string) Account
}

// Account holds one account's allowed origins, rules with the same
// origin merged. Small accounts are scanned; large ones also get a map.
type Account struct {
	Origins  []AllowedOrigin
	byOrigin map[string]*AllowedOrigin // nil below mapThreshold origins
}

// MapThreshold is the number of origins from which an account's origins
// are looked up in a map instead of a scan: a scan of a few strings,
// most of them rejected on length, is faster than hashing.
const MapThreshold = 8

// AllowedOrigin is one normalised origin and the methods it may use.
type AllowedOrigin struct {
	Origin  string // canonical serialisation, e.g. "https://mydomain.com"
	Methods *MethodSet
}

// MethodSet is shared by every origin with the same methods, so a large
// config holds each distinct set and its header value once.
type MethodSet struct {
	List   []string
	Header string // Access-Control-Allow-Methods value, "GET, POST, DELETE"
}

// allows compares a method case-sensitively, as the Fetch standard
// compares a request's method with Access-Control-Allow-Methods.
func (m *MethodSet) allows(method string) bool {
	// HEAD is treated as GET (docs/behaviour.md §1).
	return slices.Contains(m.List, method) || (method == "HEAD" && slices.Contains(m.List, "GET"))
}

// AccountOf returns the account a request path belongs to: the segment
// right after the first configured prefix that the cleaned path starts
// with (docs/behaviour.md §1). ok is false outside the prefixes and for an empty
// account segment.
func (ix *Index) AccountOf(p string) (id string, ok bool) {
	p = ix.cleanPath(p)
	if id, ok, found := ix.accountAtStart(p); found {
		return id, ok
	}
	// A PHP front controller (php_fastcgi) serves /index.php/api/... as
	// the path after the script, its PATH_INFO.
	if i := phpScriptEnd(p); i >= 0 {
		id, ok, _ = ix.accountAtStart(p[i:])
	}
	return id, ok
}

// accountAtStart reads the account of a cleaned path that starts with a
// prefix; found is false when none matches.
func (ix *Index) accountAtStart(p string) (id string, ok, found bool) {
	id, ok, found, _ = ix.startOf(p)
	return id, ok, found
}

// startOf is accountAtStart, and how many leading bytes of p are known to
// be plain (plainPath): those of a prefix p starts with exactly, as
// plainPrefix says.
func (ix *Index) startOf(p string) (id string, ok, found bool, plain int) {
	for i, pre := range ix.prefixes {
		n := len(pre)
		if strings.HasPrefix(p, pre) { // paths are nearly always lower case already
			plain = ix.plainPrefix[i]
		} else if n, ok = foldedPrefix(p, pre); !ok {
			continue
		}
		rest := p[n:]
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			rest = rest[:i]
		}
		return rest, rest != "", true, plain
	}
	return "", false, false, 0
}

// PrefixOf returns the configured prefix that path falls under, as
// AccountOf reads it.
func (ix *Index) PrefixOf(p string) string {
	p = ix.cleanPath(p)
	for _, pre := range ix.prefixes {
		if strings.HasPrefix(p, pre) {
			return pre
		}
		if _, ok := foldedPrefix(p, pre); ok {
			return pre
		}
	}
	return ""
}

// phpScriptEnd returns where the PATH_INFO of p starts, after its first
// segment that ends in ".php" (in any case), as php_fastcgi splits a
// path; -1 when p has none.
func phpScriptEnd(p string) int {
	for i := strings.IndexByte(p, '.'); i >= 0 && i+4 <= len(p); {
		if strings.EqualFold(p[i:i+4], ".php") && i+4 < len(p) && p[i+4] == '/' {
			return i + 4
		}
		j := strings.IndexByte(p[i+1:], '.')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return -1
}

// needsCleaning reports whether cleaning (Config.CleanPath) could change p:
// only a repeated slash or a "." or ".." segment can. Most paths are
// clean, and checking is cheaper than cleaning.
func needsCleaning(p string) bool {
	// Most paths have no "//" and no "." at all: vectorised scans clear
	// them faster than the loop below.
	if !strings.Contains(p, "//") && (strings.IndexByte(p, '.') < 0 || !strings.Contains(p, "/.")) {
		return false
	}
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

// foldedPrefix reports whether p, lower-cased as Caddy's path matchers
// lower-case paths (strings.ToLower), starts with lower, and how many
// bytes of p that takes. ASCII is compared in place; other runes are
// lower-cased one by one, as strings.ToLower does, because some of them
// lower-case to ASCII ("İ" to "i", the Kelvin sign to "k") and an
// invalid byte becomes U+FFFD.
func foldedPrefix(p, lower string) (int, bool) {
	i, j := 0, 0
	for j < len(lower) {
		if i >= len(p) {
			return 0, false
		}
		c := p[i]
		if c < utf8.RuneSelf {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != lower[j] {
				return 0, false
			}
			i++
			j++
			continue
		}
		r, size := utf8.DecodeRuneInString(p[i:])
		var buf [utf8.UTFMax]byte
		n := utf8.EncodeRune(buf[:], unicode.ToLower(r))
		if len(lower)-j < n || lower[j:j+n] != string(buf[:n]) {
			return 0, false
		}
		i += size
		j += n
	}
	return i, true
}

// match finds the rule of account id for the request's Origin values.
// A missing, repeated, null, malformed or too long Origin matches
// nothing (docs/behaviour.md §1). The reason says why not.
func (ix *Index) match(id string, originHdr []string) (*AllowedOrigin, Reason) {
	switch len(originHdr) {
	case 0:
		return nil, NoOrigin
	case 1:
	default:
		return nil, RepeatedOrigin
	}
	// Most requests without Origin are same-origin: they need no lookup.
	acct := ix.Account(id)
	if len(acct.Origins) == 0 {
		return nil, NoRules
	}
	o := originHdr[0]
	// Nothing longer can match, not even exactly: refuse it before the
	// lookup, which would hash all of it in a large account.
	if len(o) > ix.maxOriginLen {
		return nil, OriginNotAllowed
	}
	// Browsers send origins already serialised (Fetch standard), so the
	// exact string is nearly always the one to look for.
	if ao := acct.Find(o); ao != nil {
		return ao, Allowed
	}
	if isSerialised(o) {
		return nil, OriginNotAllowed
	}
	parsed, err := origin.Parse(o)
	if err != nil {
		return nil, MalformedOrigin
	}
	if canon := parsed.String(); canon != o {
		if ao := acct.Find(canon); ao != nil {
			return ao, Allowed
		}
	}
	return nil, OriginNotAllowed
}

// isSerialised reports whether parsing o could not change it: it has
// only lower-case ASCII letters, digits and ".-_:/", and no explicit
// default port. Such a value is either malformed or already in the form
// rules are compiled to, so when the exact lookup has missed, parsing it
// cannot find a rule: a denied browser origin costs no parse.
func isSerialised(o string) bool {
	last := 0 // where the last label (or the host) starts
	for i := 0; i < len(o); i++ {
		switch c := o[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == ':':
		case c == '.', c == '/':
			last = i + 1
		default:
			return false
		}
	}
	// A host whose last label starts with a digit may be an IPv4 address
	// in another spelling ("1.2.3" for "1.2.0.3"): let the parser decide.
	if last < len(o) && '0' <= o[last] && o[last] <= '9' {
		return false
	}
	return !strings.HasSuffix(o, ":443") && !strings.HasSuffix(o, ":80")
}

// Account returns the rules of account id: from the store when the
// handler has one, else from the config.
func (ix *Index) Account(id string) Account {
	if ix.live != nil {
		return ix.live.Account(id)
	}
	return ix.accounts[id]
}

func (a *Account) Find(o string) *AllowedOrigin {
	if a.byOrigin != nil {
		return a.byOrigin[o]
	}
	for i := range a.Origins {
		if a.Origins[i].Origin == o {
			return &a.Origins[i]
		}
	}
	return nil
}

// Config is what an index is built from: the handler's config (its
// JSON fields, with the same names and defaults).
type Config struct {
	PathPrefixes    []string // nil: DefaultPathPrefixes
	Accounts        map[string][]Rule
	AllowHeaders    []string // nil: DefaultAllowHeaders
	ExposeHeaders   []string
	MaxAge          *time.Duration // nil: defaultMaxAgeSeconds
	PreflightStatus int            // 0: defaultPreflightStatus
	// PathGuard says that requests are decided with the path guard on:
	// a prefix it would refuse every request under is then refused.
	PathGuard bool
	// Rewrites says that a handler of the server could rewrite the path
	// before this one: the path guard then reads the original target
	// too.
	Rewrites bool
	// Live, when set, gives the accounts (a rules store's), which
	// change while the index serves; Accounts is then empty.
	Live Source
	// Check adds the problems of settings the policy does not know (a
	// rules store's), in their place in the report: after max_age,
	// before the accounts.
	Check func(*Problems)

	// CleanPath reads a path as the server's path matchers do: dot
	// segments resolved, repeated slashes merged (Caddy's
	// caddyhttp.CleanPath(p, true)). Required.
	CleanPath func(string) string
	// OriginalRequest returns the request as the client sent it, before
	// any rewrite changed its target; nil when the server keeps none.
	OriginalRequest func(*http.Request) (http.Request, bool)
}

// NewIndex checks a whole config and compiles it. It is the one place
// where a config's values are checked, for JSON and Caddyfile alike; it
// reports the problems in config order (see problems), each with its
// place, and the report stays short whatever the config's size.
func NewIndex(h Config) (*Index, error) {
	var p Problems
	if h.CleanPath == nil {
		return nil, errors.New("policy: Config.CleanPath is required")
	}
	ix := &Index{status: h.PreflightStatus, accounts: make(map[string]Account, len(h.Accounts)),
		guard: h.PathGuard, rewrites: h.Rewrites, live: h.Live,
		clean: h.CleanPath, original: h.OriginalRequest}

	prefixes := h.PathPrefixes
	if prefixes == nil {
		prefixes = DefaultPathPrefixes
	} else if len(prefixes) == 0 {
		p.Add(Place{Field: "path_prefixes"}, errors.New("path_prefixes is empty: no request would be checked"))
	}
	ix.prefixes = checkPathPrefixes(prefixes, h.PathGuard, &p)
	for _, pre := range ix.prefixes {
		ix.prefixSegs = append(ix.prefixSegs, strings.Split(strings.Trim(pre, "/"), "/"))
		plain := 0
		if strings.IndexByte(pre, '.') < 0 && plainPath(pre, 0) {
			plain = len(pre) - 1
		}
		ix.plainPrefix = append(ix.plainPrefix, plain)
	}

	allow := h.AllowHeaders
	if allow == nil {
		allow = DefaultAllowHeaders
	}
	ix.allowHeaders = strings.Join(checkHeaderNames("allow_headers", allow, &p), ",")
	ix.exposeHeaders = strings.Join(checkHeaderNames("expose_headers", h.ExposeHeaders, &p), ",")

	if ix.status == 0 {
		ix.status = defaultPreflightStatus
	}
	if err := checkPreflightStatus(ix.status); err != nil {
		p.Add(Place{Field: "preflight_status"}, err)
	}
	maxAge := int64(defaultMaxAgeSeconds)
	if h.MaxAge != nil {
		if err := checkMaxAge(*h.MaxAge); err != nil {
			p.Add(Place{Field: "max_age"}, err)
		}
		maxAge = int64(*h.MaxAge / time.Second)
	}
	ix.maxAge = strconv.FormatInt(maxAge, 10)
	if h.Check != nil {
		h.Check(&p)
	}

	// Accounts in ID order: a JSON object has no order of its own, and
	// this keeps reports the same from one run to the next. (It is also
	// the order in which Caddy, which re-encodes a config with sorted
	// keys, decoded the rules, so they are read in memory order.)
	ids := make([]string, 0, len(h.Accounts))
	for id := range h.Accounts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	cache := NewMethodCache()
	longest := 0
	for _, id := range ids {
		if err := CheckAccountID(id); err != nil {
			p.Add(Place{Field: "accounts", Account: id, Rule: -1}, err)
			continue
		}
		if !isPlainID(id) {
			if ix.foldKeys == nil {
				ix.foldKeys = map[string]int{}
			}
			ix.foldKeys[foldKey(id)]++
		}
		acct := CompileAccount(id, h.Accounts[id], cache, &p)
		for _, ao := range acct.Origins {
			longest = max(longest, len(ao.Origin))
		}
		ix.accounts[id] = acct
	}
	// A non-canonical spelling of an origin is at most the length of its
	// canonical form with an explicit default port, or its Unicode host
	// at up to 4 bytes a character: nothing longer can match.
	ix.maxOriginLen = 4*longest + len(":65535")
	if ix.live != nil {
		ix.maxOriginLen = MaxAnyOriginLen
	}

	if err := p.Err(); err != nil {
		return nil, err
	}
	return ix, nil
}

// CompileAccount normalises one account's rules, merging rules with the
// same origin (their methods united, in the order first written). It
// allocates only the account's origin list (and, above mapThreshold
// origins, its map): a large config compiles quickly and holds little.
func CompileAccount(id string, rules []Rule, cache *MethodCache, p *Problems) Account {
	acct := Account{Origins: make([]AllowedOrigin, 0, len(rules))}
	var pos map[string]int // origin -> position, for large accounts only
	if len(rules) > MapThreshold {
		pos = make(map[string]int, len(rules))
	}
	for i, r := range rules {
		o, err := origin.Parse(r.Origin)
		methods, merrs := cache.parse(r.Methods)
		if err != nil || merrs != nil {
			at := Place{Field: "accounts", Account: id, Rule: i, Part: "origin"}
			for _, e := range append([]error{err}, merrs...) {
				switch {
				case e == nil:
				case p.full():
					p.Skip()
				default:
					p.Add(at, ruleErr(id, i, r.Origin, e))
				}
				at.Part = "methods"
			}
			continue
		}
		canon := r.Origin // keep one copy of the string, not two
		if !serialises(o, r.Origin) {
			canon = o.String()
		}
		j := -1
		if pos != nil {
			if k, ok := pos[canon]; ok {
				j = k
			}
		} else {
			j = slices.IndexFunc(acct.Origins, func(ao AllowedOrigin) bool { return ao.Origin == canon })
		}
		if j < 0 {
			if pos != nil {
				pos[canon] = len(acct.Origins)
			}
			acct.Origins = append(acct.Origins, AllowedOrigin{Origin: canon, Methods: methods})
			continue
		}
		acct.Origins[j].Methods = cache.union(acct.Origins[j].Methods, methods)
	}
	if len(acct.Origins) > MapThreshold {
		acct.byOrigin = make(map[string]*AllowedOrigin, len(acct.Origins))
		for i := range acct.Origins {
			acct.byOrigin[acct.Origins[i].Origin] = &acct.Origins[i]
		}
	}
	return acct
}

// serialises reports whether s is the serialisation of o (o.String()),
// without building it.
func serialises(o origin.Origin, s string) bool {
	rest, ok := strings.CutPrefix(s, o.Scheme+"://")
	if !ok {
		return false
	}
	if rest, ok = strings.CutPrefix(rest, o.Host); !ok {
		return false
	}
	if o.Port == 0 {
		return rest == ""
	}
	// origin.Parse has refused a port with a sign or leading zero.
	port, ok := strings.CutPrefix(rest, ":")
	n, err := strconv.Atoi(port)
	return ok && err == nil && n == o.Port && port[0] != '0'
}

// MethodCache compiles rules' method lists into shared methodSets. A
// large config repeats a few lists: each is parsed once, and each
// distinct set, with its header value, is held once.
type MethodCache struct {
	recent []cachedMethods       // the first lists seen, as written
	sets   map[string]*MethodSet // Access-Control-Allow-Methods value -> set
}

type cachedMethods struct {
	raw []string
	set *MethodSet
}

func NewMethodCache() *MethodCache { return &MethodCache{sets: make(map[string]*MethodSet)} }

// maxCachedMethods bounds the lists methodCache compares a rule's with.
const maxCachedMethods = 16

// parse returns the set of a rule's methods (see parseMethods).
func (c *MethodCache) parse(raw []string) (*MethodSet, []error) {
	for _, e := range c.recent {
		// nil (the default methods) and an empty list (refused) differ.
		if (e.raw == nil) == (raw == nil) && slices.Equal(e.raw, raw) {
			return e.set, nil
		}
	}
	list, errs := parseMethods(raw)
	if errs != nil {
		return nil, errs
	}
	set := c.set(list)
	if len(c.recent) < maxCachedMethods {
		c.recent = append(c.recent, cachedMethods{raw: raw, set: set})
	}
	return set, nil
}

// set returns the shared set of list.
func (c *MethodCache) set(list []string) *MethodSet {
	header := strings.Join(list, ", ")
	if s := c.sets[header]; s != nil {
		return s
	}
	s := &MethodSet{List: list, Header: header}
	c.sets[header] = s
	return s
}

// union returns the set of a's methods followed by those of b not in a.
func (c *MethodCache) union(a, b *MethodSet) *MethodSet {
	list := a.List
	for _, m := range b.List {
		if !slices.Contains(list, m) {
			list = append(slices.Clip(list), m)
		}
	}
	if len(list) == len(a.List) {
		return a
	}
	return c.set(list)
}
