package atomspherecors

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/idna"
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

// defaultPathPrefixes are the AtomSphere API and Partner API roots.
var defaultPathPrefixes = []string{"/api/rest/v1/", "/partner/api/rest/v1/"}

// defaultAllowHeaders is the Access-Control-Allow-Headers list of the
// AtomSphere API documentation, in its order.
var defaultAllowHeaders = []string{
	"cache-control", "content-type", "expires", "last-modified",
	"accept", "content-language", "authorization", "pragma",
}

const (
	defaultPreflightStatus = 204
	defaultMaxAgeSeconds   = 3600
	maxHostLen             = 253
)

// origin is a parsed, normalised web origin: the tuple a browser
// compares (Fetch standard, "same origin").
type origin struct {
	scheme string // "http" or "https"
	host   string // lower-case ASCII; an IPv6 literal keeps its brackets
	port   int    // 0 when absent or the scheme's default
}

// String serialises o the way a browser serialises an origin.
func (o origin) String() string {
	if o.port == 0 {
		return o.scheme + "://" + o.host
	}
	return o.scheme + "://" + o.host + ":" + strconv.Itoa(o.port)
}

// parseOrigin parses and normalises an origin as written in a rule or
// sent in an Origin header. It refuses anything that is not exactly
// scheme://host[:port] with an http or https scheme.
func parseOrigin(s string) (origin, error) {
	var o origin
	switch {
	case s == "":
		return o, errors.New("origin is empty")
	case s == "null":
		return o, errors.New(`the "null" origin cannot be allowed`)
	case strings.Contains(s, "*"):
		return o, errors.New("wildcard origins are not supported; list each origin")
	}
	i := strings.Index(s, "://")
	if i < 0 {
		return o, errors.New("origin must have the form scheme://host[:port]")
	}
	switch strings.ToLower(s[:i]) {
	case "http":
		o.scheme = "http"
	case "https":
		o.scheme = "https"
	default:
		return o, fmt.Errorf("scheme %s is not http or https", q(s[:i]))
	}
	rest := s[i+3:]
	if j := strings.IndexAny(rest, "/?#"); j >= 0 {
		switch rest[j] {
		case '/':
			return o, errors.New("origin must not have a path")
		case '?':
			return o, errors.New("origin must not have a query")
		default:
			return o, errors.New("origin must not have a fragment")
		}
	}
	if strings.Contains(rest, "@") {
		return o, errors.New("origin must not have user info")
	}
	if rest == "" {
		return o, errors.New("origin has no host")
	}

	var hostPart, portPart string
	var hasPort bool
	var err error
	if rest[0] == '[' {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return o, errors.New("IPv6 address has no closing bracket")
		}
		hostPart, rest = rest[1:end], rest[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return o, errors.New("unexpected text after IPv6 address")
			}
			portPart, hasPort = rest[1:], true
		}
		if o.host, err = normaliseIPv6(hostPart); err != nil {
			return o, err
		}
	} else {
		hostPart = rest
		if k := strings.LastIndexByte(rest, ':'); k >= 0 {
			hostPart, portPart, hasPort = rest[:k], rest[k+1:], true
		}
		if o.host, err = normaliseHost(hostPart); err != nil {
			return o, err
		}
	}
	if hasPort {
		if o.port, err = parsePort(portPart); err != nil {
			return o, err
		}
		if (o.scheme == "https" && o.port == 443) || (o.scheme == "http" && o.port == 80) {
			o.port = 0
		}
	}
	return o, nil
}

// parsePort accepts a decimal port 1-65535 without sign or leading zero,
// as a browser serialises it.
func parsePort(s string) (int, error) {
	if s == "" {
		return 0, errors.New("port is empty")
	}
	if len(s) > 5 || s[0] == '0' {
		return 0, fmt.Errorf("port %s is outside 1-65535", q(s))
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("port %s is not a number", q(s))
		}
		n = n*10 + int(c-'0')
	}
	if n > 65535 {
		return 0, fmt.Errorf("port %s is outside 1-65535", q(s))
	}
	return n, nil
}

// normaliseIPv6 checks an IPv6 literal (without brackets) and returns it
// bracketed in the URL standard's serialisation: lower-case hex, the
// first longest run of two or more zero groups compressed, no zone.
func normaliseIPv6(s string) (string, error) {
	addr, err := netip.ParseAddr(s)
	if err != nil || !addr.Is6() || addr.Zone() != "" {
		return "", fmt.Errorf("%s is not an IPv6 address", q(s))
	}
	b := addr.As16()
	var groups [8]uint16
	for i := range groups {
		groups[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
	}
	bestStart, bestLen := -1, 1
	for i := 0; i < 8; {
		if groups[i] != 0 {
			i++
			continue
		}
		j := i
		for j < 8 && groups[j] == 0 {
			j++
		}
		if j-i > bestLen {
			bestStart, bestLen = i, j-i
		}
		i = j
	}
	var sb strings.Builder
	sb.WriteByte('[')
	for i := 0; i < 8; i++ {
		if i == bestStart {
			sb.WriteString("::")
			i += bestLen - 1
			continue
		}
		if i > 0 && i != bestStart+bestLen {
			sb.WriteByte(':')
		}
		sb.WriteString(strconv.FormatUint(uint64(groups[i]), 16))
	}
	sb.WriteByte(']')
	return sb.String(), nil
}

// normaliseHost lower-cases a domain name or IPv4 address and converts
// an international name to its ASCII (punycode) form, refusing what a
// browser could never send as an origin's host.
func normaliseHost(s string) (string, error) {
	if s == "" {
		return "", errors.New("origin has no host")
	}
	if strings.HasSuffix(s, ".") {
		return "", fmt.Errorf("host %s must not end with a dot", q(s))
	}
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			ascii = false
			break
		}
	}
	var h string
	if ascii {
		h = strings.ToLower(s)
		if strings.Contains(h, "xn--") {
			// A punycode label must decode to a valid international name.
			if _, err := idna.Lookup.ToUnicode(h); err != nil {
				return "", fmt.Errorf("host %s is not a valid international name: %s", q(s), short(err.Error()))
			}
		}
	} else {
		// idna maps an invalid byte to U+FFFD without refusing it.
		if !utf8.ValidString(s) {
			return "", fmt.Errorf("host %s is not valid UTF-8", q(s))
		}
		var err error
		if h, err = idna.Lookup.ToASCII(s); err != nil {
			return "", fmt.Errorf("host %s is not a valid international name: %s", q(s), short(err.Error()))
		}
	}
	// IDNA mapping can delete characters (a soft hyphen) or turn them into
	// a dot (an ideographic full stop): check the result again.
	if h == "" || strings.HasSuffix(h, ".") {
		return "", fmt.Errorf("host %s must not be empty or end with a dot", q(s))
	}
	// The URL standard reads a host that ends in a number as an IPv4
	// address, in decimal, octal or hex parts, and browsers serialise it
	// in dotted decimal: "http://1.2.3" is sent as "http://1.2.0.3".
	if endsInNumber(h) {
		v4, err := parseIPv4(h)
		if err != nil {
			return "", fmt.Errorf("host %s ends in a number but is not an IPv4 address: %v", q(s), err)
		}
		h = v4
	}
	if len(h) > maxHostLen {
		return "", fmt.Errorf("host %s is longer than %d characters", q(s), maxHostLen)
	}
	prev := byte('.')
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if prev == '.' {
				return "", fmt.Errorf("host %s has an empty label", q(s))
			}
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return "", fmt.Errorf("host %s has the invalid character %q", q(s), c)
		}
		prev = c
	}
	return h, nil
}

// endsInNumber is the URL standard's "ends in a number" check of a
// host (https://url.spec.whatwg.org/#ends-in-a-number-checker): its last
// label is all decimal digits, or a hex number "0x...".
func endsInNumber(h string) bool {
	last := h[strings.LastIndexByte(h, '.')+1:]
	if last == "" {
		return false
	}
	if strings.Trim(last, "0123456789") == "" {
		return true
	}
	hex, ok := strings.CutPrefix(last, "0x")
	if !ok {
		hex, ok = strings.CutPrefix(last, "0X")
	}
	return ok && strings.Trim(hex, "0123456789abcdefABCDEF") == ""
}

// parseIPv4 is the URL standard's IPv4 parser
// (https://url.spec.whatwg.org/#concept-ipv4-parser): one to four parts,
// each decimal, octal (leading 0) or hex (0x), the last filling the
// remaining bytes. It returns the dotted-decimal serialisation.
func parseIPv4(h string) (string, error) {
	parts := strings.Split(h, ".")
	if len(parts) > 4 {
		return "", errors.New("more than four parts")
	}
	var nums [4]uint64
	for i, p := range parts {
		n, err := parseIPv4Part(p)
		if err != nil {
			return "", err
		}
		if i < len(parts)-1 && n > 255 {
			return "", fmt.Errorf("part %s is over 255", q(p))
		}
		nums[i] = n
	}
	last := nums[len(parts)-1]
	if last >= 1<<(8*(5-len(parts))) {
		return "", fmt.Errorf("last part %s is too large", q(parts[len(parts)-1]))
	}
	addr := last
	for i := 0; i < len(parts)-1; i++ {
		addr += nums[i] << (8 * (3 - i))
	}
	return fmt.Sprintf("%d.%d.%d.%d", addr>>24, addr>>16&0xFF, addr>>8&0xFF, addr&0xFF), nil
}

// parseIPv4Part is the URL standard's IPv4 number parser.
func parseIPv4Part(p string) (uint64, error) {
	if p == "" {
		return 0, errors.New("empty part")
	}
	base := 10
	switch {
	case len(p) >= 2 && (p[:2] == "0x" || p[:2] == "0X"):
		p, base = p[2:], 16
	case len(p) >= 2 && p[0] == '0':
		p, base = p[1:], 8
	}
	if p == "" {
		return 0, nil
	}
	if len(p) > 16 {
		return 0, fmt.Errorf("part %s is too large", q(p))
	}
	n, err := strconv.ParseUint(p, base, 64)
	if err != nil {
		return 0, fmt.Errorf("part %s is not a number", q(p))
	}
	return n, nil
}

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
func checkPathPrefix(p string) error {
	switch {
	case !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/"):
		return fmt.Errorf("path prefix %s must start and end with /", q(p))
	case needsCleaning(p):
		return fmt.Errorf("path prefix %s must be a clean path (no //, . or .. segments)", q(p))
	case strings.ContainsAny(p, "{}"):
		return fmt.Errorf("path prefix %s: placeholders are not expanded here (in a Caddyfile, {$VAR} reads an environment variable)", q(p))
	case strings.ContainsAny(p, "%*"):
		return fmt.Errorf("path prefix %s: prefixes are compared with the decoded path, so write it decoded, without %% escapes or * wildcards", q(p))
	}
	return nil
}

// checkPathPrefixes checks each prefix and returns them lower-cased, in
// order, less the refused ones. A prefix that an earlier one always
// matches first (it starts with the earlier one, in any case) could
// never be used, and is refused naming both.
func checkPathPrefixes(prefixes []string, p *problems) []string {
	out := make([]string, 0, len(prefixes))
	type entry struct {
		lower string
		index int // in prefixes
	}
	var ok []entry
	for i, pre := range prefixes {
		if err := checkPathPrefix(pre); err != nil {
			p.add(place{field: "path_prefixes"}, err)
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
			p.add(place{field: "path_prefixes"}, fmt.Errorf("path prefix %s is never used: the earlier prefix %s matches every path it would",
				q(prefixes[e.index]), q(prefixes[j])))
			continue
		}
		out = append(out, e.lower)
	}
	return out
}

// checkAccountID refuses an account ID that could never be a single
// segment of a cleaned request path.
func checkAccountID(id string) error {
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
func checkHeaderNames(field string, names []string, p *problems) []string {
	out := make([]string, 0, len(names))
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		l := strings.ToLower(n)
		switch {
		case n == "*":
			p.add(place{field: field}, fmt.Errorf(`%s: "*" is not a wildcard when credentials are allowed; list each header`, field))
		case !httpguts.ValidHeaderFieldName(n):
			if p.full() {
				p.skip()
				continue
			}
			p.add(place{field: field}, fmt.Errorf("%s: %s is not a valid header name", field, q(n)))
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
