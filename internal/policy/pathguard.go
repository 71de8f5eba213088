package policy

import (
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// The path guard. The module decides for the account that Caddy's
// cleaned path names, but the upstream serves the account that its own
// reading of the request target names. Common backends read some
// targets differently from Caddy: routers that split the raw target
// before decoding it keep "%2f" inside a segment (Express, chi), servlet
// containers strip path parameters ("..;/"), Windows servers take "\\"
// for "/" and trim trailing dots and spaces, C code stops at a NUL, some
// decode twice, accept overlong UTF-8, normalise Unicode (NFKC) or
// compare case-insensitively with Unicode folding ("ſ" for "s").
// Where any of those readings names another account than Caddy's (or an
// account where Caddy sees none, or none where Caddy sees one), a page
// allowed by one account could read another's data, so the request is
// refused before any CORS decision (docs/behaviour.md §5).
//
// Only targets with an escape Go would not write, or a byte that
// scanPath looks for, or a segment ending in a dot, can be read
// differently this way; every other path costs a scan for them.

// guardedPath reports whether the path guard must look at r: its target
// was escaped in a way Go's URL parser does not keep as it is (RawPath
// set, or a target as sent that differs from the path), or its path has
// a byte some backend reads specially, a segment that ends in a dot (a
// "." or ".." segment, which a router that does not resolve them reads
// as a segment, or one such as "..." or "x.", which a trimming backend
// reads as another) or a PHP script's PATH_INFO (see scanPath).
func guardedPath(r *http.Request) bool {
	return guardedTarget(r, plainPath(r.URL.Path, 0))
}

// guardedTarget is guardedPath for a request whose path is known to be
// plain or not (plainPath), so that a plain path is not scanned twice.
func guardedTarget(r *http.Request, plain bool) bool {
	p := r.URL.Path
	if r.URL.RawPath != "" || !plain && scanPath(p) {
		return true
	}
	if r.RequestURI == p {
		return false // sent as it is read: the common case
	}
	sent := sentPath(r)
	return sent != p && scanPath(sent)
}

// plainPath reports whether p has no byte the path guard looks at, no
// "//", and dots only in its last segment, which does not end in one:
// nearly every path ("/api/rest/v1/acct/items", "/static/app.js"). Such
// a path needs no cleaning (needsCleaning), has no script with PATH_INFO
// after it (phpScriptEnd) and nothing for scanPath to find, so that one
// scan of it tells all three. The first skip bytes of p are known to be
// plain and to have no dot: the scan starts after them.
func plainPath(p string, skip int) bool {
	t := &byteClasses
	q := p[skip:]
	// Eight bytes at a time while they are all plain; c's length is
	// known, so its reads need no bounds checks.
	for len(q) >= 8 {
		c := q[:8]
		if t[c[0]]|t[c[1]]|t[c[2]]|t[c[3]]|t[c[4]]|t[c[5]]|t[c[6]]|t[c[7]] != plainByte {
			break
		}
		q = q[8:]
	}
	for i := 0; i < len(q); i++ {
		switch t[q[i]] {
		case plainByte:
			continue
		case guardByte:
			return false
		}
		// The first dot: the rest is the last segment, or p is not plain.
		if strings.IndexByte(q[i:], '/') >= 0 || p[len(p)-1] == '.' {
			return false
		}
		for ; i < len(q); i++ {
			if t[q[i]] == guardByte {
				return false
			}
		}
	}
	return !strings.Contains(p[skip:], "//")
}

// sentPath is the path of the request target as the client sent it, or
// "" when the request has none (one made in Go, not read from a client).
// A rewrite sets it to the rewritten target.
func sentPath(r *http.Request) string {
	p := r.RequestURI
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	if !strings.HasPrefix(p, "/") {
		return "" // absolute-form or "*": the URL's path is what was sent
	}
	return p
}

// Byte classes of scanPath: a byte some backend reads differently from
// Caddy, and the dot.
const (
	plainByte = iota
	guardByte
	dotByte
)

// byteClasses classes every byte for scanPath.
var byteClasses = func() (t [256]uint8) {
	for c := range 256 {
		if guardedByte(byte(c)) {
			t[c] = guardByte
		}
	}
	t['.'] = dotByte
	return t
}()

// scanPath reports whether the path guard must read p: whether it has a
// byte some backend reads differently from Caddy (guardedByte), a segment
// that ends in a dot, or a segment with a dot followed by more path (a
// script and its PATH_INFO). Every path of every request is
// scanned, so it looks at eight bytes at a time, and at each only when
// one of them is not plain.
func scanPath(p string) bool {
	t := &byteClasses
	i := 0
	for ; i+8 <= len(p); i += 8 {
		if t[p[i]]|t[p[i+1]]|t[p[i+2]]|t[p[i+3]]|t[p[i+4]]|t[p[i+5]]|t[p[i+6]]|t[p[i+7]] != plainByte {
			for j := i; j < i+8; j++ {
				if scanAt(p, j) {
					return true
				}
			}
		}
	}
	for ; i < len(p); i++ {
		if scanAt(p, i) {
			return true
		}
	}
	return false
}

// scanAt is scanPath for the byte at i.
func scanAt(p string, i int) bool {
	switch byteClasses[p[i]] {
	case plainByte:
		return false
	case guardByte:
		return true
	}
	// A segment that ends in a dot, or a dotted segment with more path
	// after it (a script and its PATH_INFO, whatever the extension).
	return strings.IndexByte(p[i+1:], '/') >= 0 || i+1 == len(p)
}

// hasGuardedByte reports whether p has a byte guardedByte reports.
func hasGuardedByte(p string) bool {
	for i := range len(p) {
		if guardedByte(p[i]) {
			return true
		}
	}
	return false
}

// guardedByte reports whether some backend reads c differently from
// Caddy: '%' (decoded again), ';' (path parameters), '\\' (a separator
// on Windows), '#' and '?' (decoded and parsed again), a space or control
// character (trimmed, or ending a C string) or a byte of 0x80 or more
// (overlong UTF-8, Unicode folding, compatibility forms, Latin-1).
func guardedByte(c byte) bool {
	switch c {
	case '%', ';', '\\', '#', '?', 0x7f:
		return true
	}
	return c <= ' ' || c >= utf8.RuneSelf
}

// ambiguous is the first common backend reading of r's target that
// names another account than Caddy's reading (id, ok); none fired when
// none does.
// It reads the target reverse_proxy forwards (the escaped path) and,
// where it differs and spells the same path, the target as the client
// sent it (which other transports, such as FastCGI's REQUEST_URI, pass
// on).
func (ix *Index) ambiguous(r *http.Request, id string, ok bool) Reading {
	raw := r.URL.EscapedPath()
	if rd := ix.readsOther(raw, r.URL.Path, id, ok); rd.Fired() {
		return rd
	}
	if sent := sentPath(r); sent != "" && sent != raw && strings.IndexByte(sent, '%') >= 0 {
		if p, err := url.PathUnescape(sent); err == nil && p == r.URL.Path {
			return ix.readsOther(sent, r.URL.Path, id, ok)
		}
	}
	return Reading{}
}

// readsOther is the first reading of the escaped path raw that names
// another account than (id, ok), Caddy's reading of path; none fired
// when none does.
func (ix *Index) readsOther(raw, path, id string, ok bool) Reading {
	if rid, rok := ix.rawAccountOf(raw); rok != ok || rid != id {
		return Reading{check: checkRawSegments}
	}
	rs, converged := readings(raw)
	if !converged {
		return Reading{check: checkUnending} // no telling what it names
	}
	if ix.scriptReadsOther(path, id, ok) {
		return Reading{check: checkScript}
	}
	for i, p := range rs {
		if p == path || i > 0 && (p == rs[i-1] || p == rs[0]) {
			continue // most readings change nothing: read each path once
		}
		g := &guardReadings[i]
		rid, rok := ix.AccountOf(p)
		if rok != ok || rid != id && !(g.foldsLetters && ix.sameLetters(rid, id)) {
			return readingOf(i)
		}
		if ix.scriptReadsOther(p, id, ok) {
			rd := readingOf(i)
			rd.thenScript = true
			return rd
		}
	}
	return Reading{}
}

// scriptReadsOther reports whether a script's PATH_INFO in p names
// another account than (id, ok): FastCGI splits a path after a segment
// with the script's extension (php_fastcgi's split_path: ".php" by
// default, any list in a config), and a front controller routes the rest.
// Every segment with an extension and more path after it is taken for a
// possible script, so that any split list is covered.
func (ix *Index) scriptReadsOther(p, id string, ok bool) bool {
	if !hasScriptSegment(p) {
		return false
	}
	p = ix.cleanPath(p)
	for start := 0; start < len(p); {
		end := strings.IndexByte(p[start+1:], '/')
		if end < 0 {
			return false
		}
		end += start + 1
		if seg := p[start+1 : end]; strings.IndexByte(seg, '.') >= 0 {
			if rid, rok, found := ix.accountAtStart(p[end:]); found && (rok != ok || rid != id) {
				return true
			}
		}
		start = end
	}
	return false
}

// sameLetters reports whether a reading that folds letters may name the
// account rid where Caddy names id: when rid is id with the reading's
// letters folded ("straße" read as "strasse"), the same path segment, and
// no other configured account folds to the same ID (lower-cased, letters
// folded: "ſTORE" and "store", NFC and NFD "café"). Such readings are
// there for the prefix (docs/behaviour.md §5); a backend that looks an
// account up by a folded ID is a setup the docs warn against.
func (ix *Index) sameLetters(rid, id string) bool {
	if rid != letters(id) {
		return false
	}
	k := foldKey(id)
	if k != id && len(ix.Account(k).Origins) > 0 || ix.foldKeys[k] > 1 {
		return false
	}
	return len(ix.Account(rid).Origins) == 0 && len(ix.Account(strings.ToLower(rid)).Origins) == 0
}

// rawAccountOf reads the account as a router that splits the target
// before it decodes it does (Express, chi and other raw-path routers):
// an encoded "/" ("%2f") stays inside its segment, "%2e" is not a dot,
// and "." and ".." are segments like any other (such routers do not
// resolve them; browsers do before they send a request, but Caddy's
// decoding of "%2f" makes new ones in the target reverse_proxy sends).
// Empty segments are dropped, as Caddy and most routers do.
func (ix *Index) rawAccountOf(raw string) (string, bool) {
	var buf [16]string
	segs := buf[:0]
	for seg := range strings.SplitSeq(raw, "/") {
		if seg != "" {
			segs = append(segs, seg)
		}
	}
	if id, ok, found := ix.rawAccountAtStart(segs); found {
		return id, ok
	}
	for i, seg := range segs { // PATH_INFO after a PHP script (accountOf)
		if len(seg) > 4 && strings.EqualFold(percentDecode(seg)[max(0, len(percentDecode(seg))-4):], ".php") {
			id, ok, _ := ix.rawAccountAtStart(segs[i+1:])
			return id, ok
		}
	}
	return "", false
}

// rawAccountAtStart is rawAccountOf for segments that start with a
// prefix's; found is false when none matches.
func (ix *Index) rawAccountAtStart(segs []string) (id string, ok, found bool) {
	for _, preSegs := range ix.prefixSegs {
		if len(segs) < len(preSegs) {
			continue
		}
		match := true
		for i, ps := range preSegs {
			if seg := segs[i]; seg != ps && strings.ToLower(percentDecode(seg)) != ps {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		if len(segs) == len(preSegs) {
			return "", false, true
		}
		return percentDecode(segs[len(preSegs)]), true, true
	}
	return "", false, false
}

// originalReadsOther is the reading under which the target the client
// sent, before a rewrite (handle_path, uri strip_prefix...) changed it,
// names another account than (id, ok); none fired when none does: a transport that passes the
// original target on (FastCGI's REQUEST_URI, a header with
// {http.request.orig_uri}) lets the backend read it. The prefix may be
// anywhere in it (a rewrite may have stripped what comes before), so
// every place a prefix stands must name Caddy's account.
func (ix *Index) originalReadsOther(r *http.Request, id string, ok bool) Reading {
	if ix.original == nil {
		return Reading{}
	}
	orig, found := ix.original(r)
	if !found {
		return Reading{}
	}
	sent := sentPath(&orig)
	if sent == "" || sent == sentPath(r) {
		return Reading{}
	}
	for _, acct := range ix.rawAccountsAnywhere(sent) {
		if !ok || acct != id {
			return Reading{check: checkRawSegments, viaOriginal: true}
		}
	}
	rs, converged := readings(sent)
	if !converged {
		return Reading{check: checkUnending, viaOriginal: true}
	}
	for i, p := range rs {
		if i > 0 && p == rs[i-1] {
			continue
		}
		g := &guardReadings[i]
		for _, acct := range ix.accountsAnywhere(p) {
			if !ok || acct != id && !(g.foldsLetters && ix.sameLetters(acct, id)) {
				rd := readingOf(i)
				rd.viaOriginal = true
				return rd
			}
		}
	}
	return Reading{}
}

// rawAccountsAnywhere is rawAccountOf for a prefix anywhere in raw: the
// account after each place a prefix's segments stand.
func (ix *Index) rawAccountsAnywhere(raw string) []string {
	var segs []string
	for seg := range strings.SplitSeq(raw, "/") {
		if seg != "" {
			segs = append(segs, seg)
		}
	}
	var out []string
	for start := range segs {
		if id, ok, _ := ix.rawAccountAtStart(segs[start:]); ok {
			out = append(out, id)
		}
	}
	return out
}

// accountsAnywhere is accountOf for a prefix anywhere in p: the account
// after each place a prefix stands in p, cleaned and lower-cased as
// Caddy's path matchers read it.
func (ix *Index) accountsAnywhere(p string) []string {
	p = ix.cleanPath(p)
	lower := strings.ToLower(p)
	if len(lower) != len(p) {
		p = lower // the account is compared lower-cased too, then
	}
	var out []string
	for _, pre := range ix.prefixes {
		for i := 0; ; {
			j := strings.Index(lower[i:], pre)
			if j < 0 {
				break
			}
			rest := p[i+j+len(pre):]
			if k := strings.IndexByte(rest, '/'); k >= 0 {
				rest = rest[:k]
			}
			if rest != "" {
				out = append(out, rest)
			}
			i += j + 1
		}
	}
	return out
}

// hasScriptSegment reports whether p has a segment with a dot, other
// than "." and "..", with more path after it.
func hasScriptSegment(p string) bool {
	for p != "" {
		seg, rest, more := strings.Cut(p, "/")
		if more && seg != "." && seg != ".." && strings.IndexByte(seg, '.') >= 0 {
			return true
		}
		p = rest
	}
	return false
}

// MightOwn reports whether r's path, or a path a backend reads from it,
// has one of the prefixes anywhere: whether a handler with them could
// act on r here, or further down its route after a prefix is stripped.
// It errs towards yes, and runs only for errors.
func (ix *Index) MightOwn(r *http.Request) bool {
	if ix.containsPrefix(r.URL.Path) {
		return true
	}
	if !ix.guard || !guardedPath(r) {
		return false
	}
	raw := r.URL.EscapedPath()
	if _, ok := ix.rawAccountOf(raw); ok || ix.containsPrefix(percentDecode(raw)) {
		return true
	}
	rs, converged := readings(raw)
	if !converged {
		return true
	}
	for _, p := range rs {
		if ix.containsPrefix(p) {
			return true
		}
	}
	return false
}

// containsPrefix reports whether p, cleaned and lower-cased as Caddy's
// path matchers read it, has one of the prefixes anywhere.
func (ix *Index) containsPrefix(p string) bool {
	p = ix.cleanPath(p)
	p = strings.ToLower(p)
	for _, pre := range ix.prefixes {
		if strings.Contains(p, pre) {
			return true
		}
	}
	return false
}
