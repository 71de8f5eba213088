package atomspherecors

import (
	"net/http"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/text/unicode/norm"
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
	p := r.URL.Path
	if r.URL.RawPath != "" || scanPath(p) {
		return true
	}
	sent := sentPath(r)
	return sent != p && scanPath(sent)
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

// hasDotEndedSegment reports whether a segment of p ends in a dot.
func hasDotEndedSegment(p string) bool {
	return p != "" && p[len(p)-1] == '.' || strings.Contains(p, "./")
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

// ambiguous reports whether some common backend reading of r's target
// names another account than Caddy's reading (id, ok). It reads the
// target reverse_proxy forwards (the escaped path) and, where it differs
// and spells the same path, the target as the client sent it (which other
// transports, such as FastCGI's REQUEST_URI, pass on).
func (ix *index) ambiguous(r *http.Request, id string, ok bool) bool {
	raw := r.URL.EscapedPath()
	if ix.readsOther(raw, r.URL.Path, id, ok) {
		return true
	}
	if sent := sentPath(r); sent != "" && sent != raw && strings.IndexByte(sent, '%') >= 0 {
		if p, err := url.PathUnescape(sent); err == nil && p == r.URL.Path {
			return ix.readsOther(sent, r.URL.Path, id, ok)
		}
	}
	return false
}

// readsOther reports whether a reading of the escaped path raw names
// another account than (id, ok), Caddy's reading of path.
func (ix *index) readsOther(raw, path, id string, ok bool) bool {
	if rid, rok := ix.rawAccountOf(raw); rok != ok || rid != id {
		return true
	}
	rs, converged := readings(raw)
	if !converged {
		return true // still decoding after maxDecodes: no telling what it names
	}
	if ix.scriptReadsOther(path, id, ok) {
		return true
	}
	for i, p := range rs {
		if p == path || i > 0 && (p == rs[i-1] || p == rs[0]) {
			continue // most readings change nothing: read each path once
		}
		rid, rok := ix.accountOf(p)
		if rok != ok || rid != id && !(i >= firstLetterReading && ix.sameLetters(rid, id)) {
			return true
		}
		if ix.scriptReadsOther(p, id, ok) {
			return true
		}
	}
	return false
}

// scriptReadsOther reports whether a script's PATH_INFO in p names
// another account than (id, ok): FastCGI splits a path after a segment
// with the script's extension (php_fastcgi's split_path: ".php" by
// default, any list in a config), and a front controller routes the rest.
// Every segment with an extension and more path after it is taken for a
// possible script, so that any split list is covered.
func (ix *index) scriptReadsOther(p, id string, ok bool) bool {
	if !hasScriptSegment(p) {
		return false
	}
	if needsCleaning(p) {
		p = caddyhttp.CleanPath(p, true)
	}
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
func (ix *index) sameLetters(rid, id string) bool {
	if rid != letters(id) {
		return false
	}
	k := foldKey(id)
	if k != id && len(ix.account(k).origins) > 0 || ix.foldKeys[k] > 1 {
		return false
	}
	return len(ix.account(rid).origins) == 0 && len(ix.account(strings.ToLower(rid)).origins) == 0
}

// foldKey is the ID two accounts share when a backend that folds case,
// width, compatibility forms and accents reads them as one.
func foldKey(id string) string { return letters(strings.ToLower(id)) }

// isPlainID reports whether id is lower-case ASCII, its own fold key.
func isPlainID(id string) bool {
	for i := 0; i < len(id); i++ {
		if c := id[i]; c >= utf8.RuneSelf || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// letters is s with the letter foldings of the readings applied.
func letters(s string) string { return foldRunes(stripMarks(compatible(s))) }

// readings are the paths that common backends read from the escaped
// path raw, other than Caddy's and the raw segments' (rawAccountOf); from
// firstLetterReading on, readings that fold letters. converged is false
// when raw is still decoding after maxDecodes rounds.
func readings(raw string) (rs [16]string, converged bool) {
	once := percentDecode(raw)
	lenient, converged := lenientest(raw)
	return [...]string{
		percentDecode(stripParams(raw)),    // parameters stripped, then decoded (Tomcat)
		stripParams(once),                  // decoded, then parameters stripped (%3B)
		strings.ReplaceAll(once, `\`, "/"), // backslash as a separator
		percentDecode(once),                // decoded twice
		decodeOverlong(once),               // overlong UTF-8 for ASCII
		cutAtAny(once, "#?"),               // decoded, then parsed again as a URL
		cutAtAny(once, "\x00"),             // a C string ends at the first NUL
		dropControls(once),                 // control and invisible format characters removed
		trimSegments(once),                 // spaces trimmed, trailing dots too (Windows)
		bestFit(once),                      // Windows "best fit" to an ANSI code page
		latin1(once),                       // bytes that are not UTF-8 read as Latin-1
		trimSegments(latin1(once)),         // the same, then trimmed
		compatible(once),                   // Unicode compatibility forms (NFKC)
		foldRunes(once),                    // Unicode case folding (Java's equalsIgnoreCase)
		stripMarks(once),                   // accents and other combining marks dropped
		lenient,                            // all of the above at once
	}, converged
}

// firstLetterReading is the index of the first reading that folds
// letters, which may change an account ID's letters without naming
// another account (see sameLetters).
const firstLetterReading = 12

// maxDecodes bounds the rounds of decoding of the most lenient reading.
// A target still decoding after them is refused: every round at least
// shortens it, and no client of an API nests escapes that deep.
const maxDecodes = 8

// lenientest reads p as the most lenient backend would: decoded until
// nothing changes (compatibility and best-fit forms and overlong UTF-8
// folded each time), "\\" as "/", path parameters stripped, cut at '#',
// '?' or NUL, control and format characters dropped, segments trimmed,
// marks dropped and letters case-folded. converged is false when p was
// still changing after maxDecodes rounds.
func lenientest(p string) (_ string, converged bool) {
	for range maxDecodes {
		d := bestFit(compatible(decodeOverlong(percentDecode(p))))
		if d == p {
			converged = true
			break
		}
		p = d
	}
	p = strings.ReplaceAll(p, `\`, "/")
	p = stripParams(p)
	p = cutAtAny(p, "#?\x00")
	return foldRunes(stripMarks(trimSegments(dropControls(p)))), converged
}

// stripMarks drops combining marks (accents): "kü" (with a combining
// diaeresis) and "ku\u0308" are "ku", as backends that strip accents
// before routing read them.
func stripMarks(s string) string {
	if isASCII(s) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Mn, r) {
			return -1
		}
		return r
	}, norm.NFKD.String(s))
}

// rawAccountOf reads the account as a router that splits the target
// before it decodes it does (Express, chi and other raw-path routers):
// an encoded "/" ("%2f") stays inside its segment, "%2e" is not a dot,
// and "." and ".." are segments like any other (such routers do not
// resolve them; browsers do before they send a request, but Caddy's
// decoding of "%2f" makes new ones in the target reverse_proxy sends).
// Empty segments are dropped, as Caddy and most routers do.
func (ix *index) rawAccountOf(raw string) (string, bool) {
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
func (ix *index) rawAccountAtStart(segs []string) (id string, ok, found bool) {
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

// cutAtAny returns s up to its first byte in chars.
func cutAtAny(s, chars string) string {
	if i := strings.IndexAny(s, chars); i >= 0 {
		return s[:i]
	}
	return s
}

// dropControls removes ASCII control characters and invisible format
// characters (Unicode category Cf and other default-ignorable code
// points: soft hyphen, zero-width space, byte order mark...), as backends
// that strip them, or normalise with NFKC_Casefold, do before routing.
func dropControls(s string) string {
	if !hasControl(s) && isASCII(s) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || r >= utf8.RuneSelf && invisible(r) {
			return -1
		}
		return r
	}, s)
}

// invisible reports whether r is a format character or another
// default-ignorable code point.
func invisible(r rune) bool {
	return unicode.In(r, unicode.Cf, unicode.Other_Default_Ignorable_Code_Point)
}

// trimSegments trims each segment of p as Windows and trimming backends
// read it: white space (Unicode's, as Go's TrimSpace, Java's strip and
// JavaScript's trim read it), control and format characters at both
// ends, dots at the end. A segment of dots, spaces and such only becomes
// "..", and so a parent directory, when it has two dots or more, "."
// when it has one.
func trimSegments(p string) string {
	if !needsTrimming(p) {
		return p
	}
	segs := strings.Split(p, "/")
	for i, seg := range segs {
		if seg == "." || seg == ".." {
			continue
		}
		t := strings.TrimRightFunc(strings.TrimFunc(seg, trimmable), func(r rune) bool { return r == '.' || trimmable(r) })
		if t == "" {
			switch n := strings.Count(seg, "."); {
			case n >= 2:
				t = ".."
			case n == 1:
				t = "."
			}
		}
		segs[i] = t
	}
	return strings.Join(segs, "/")
}

// trimmable reports whether some backend trims r from the ends of a
// segment.
func trimmable(r rune) bool {
	return r <= ' ' || r == 0x7f || unicode.IsSpace(r) || r >= utf8.RuneSelf && invisible(r)
}

// needsTrimming reports whether trimSegments could change p: whether p
// has a space, a control character or a byte that is not ASCII, or a
// segment ending in a dot.
func needsTrimming(p string) bool {
	for i := 0; i < len(p); i++ {
		if p[i] <= ' ' || p[i] >= utf8.RuneSelf || p[i] == 0x7f {
			return true
		}
	}
	return hasTrailingDots(p)
}

// hasTrailingDots reports whether a segment of p other than "." and ".."
// ends in a dot, which trimSegments trims.
func hasTrailingDots(p string) bool {
	for p != "" {
		seg, rest, _ := strings.Cut(p, "/")
		if seg != "" && seg[len(seg)-1] == '.' && seg != "." && seg != ".." {
			return true
		}
		p = rest
	}
	return false
}

// compatible is s in Unicode compatibility form (NFKC), in which the
// fullwidth "．", "／" and "＼" are ".", "/" and "\\", as backends that
// normalise paths read them.
func compatible(s string) string {
	if isASCII(s) {
		return s
	}
	return norm.NFKC.String(s)
}

// isASCII reports whether s has only ASCII bytes.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// hasControl reports whether s has an ASCII control character.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c == 0x7f {
			return true
		}
	}
	return false
}

// foldRunes replaces each letter that is not ASCII but case-folds to
// ASCII (upper-cased, then lower-cased, as Java's equalsIgnoreCase and
// regionMatches compare, or within Go's strings.EqualFold) with that
// ASCII text: "ſ" (long s) is "s", "ı" (dotless i) is "i", the Kelvin
// sign is "k", and "ß" and "ẞ" are "ss" (full case mapping, as Java's and
// JavaScript's toUpperCase and Python's casefold give).
func foldRunes(s string) string {
	if isASCII(s) {
		return s
	}
	s = sharpS.Replace(s)
	return strings.Map(func(r rune) rune {
		if r < utf8.RuneSelf {
			return r
		}
		if f := unicode.ToLower(unicode.ToUpper(r)); f < utf8.RuneSelf {
			return f
		}
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if f < utf8.RuneSelf {
				return unicode.ToLower(f)
			}
		}
		return r
	}, s)
}

// sharpS replaces the letters whose full case folding is ASCII text of
// more than one letter.
var sharpS = strings.NewReplacer("\u00df", "ss", "\u1e9e", "ss")

// bestFitRunes are characters that Windows' "best fit" conversion to an
// ANSI code page turns into "/", "\\" or "." (NFKC already folds the
// fullwidth and small forms): a backend that converts a path that way
// reads them as separators or dots.
var bestFitRunes = strings.NewReplacer(
	"\u2215", "/", // division slash
	"\u2044", "/", // fraction slash
	"\u2216", `\`, // set minus
	"\u29f5", `\`, // reverse solidus operator
	"\u00a5", `\`, // yen sign (Japanese code pages)
	"\u20a9", `\`, // won sign (Korean code pages)
	"\u2024", ".", // one dot leader
)

// bestFit is s with the characters of bestFitRunes replaced.
func bestFit(s string) string {
	if isASCII(s) {
		return s
	}
	return bestFitRunes.Replace(s)
}

// latin1 reads every byte of s that is not part of valid UTF-8 as the
// Latin-1 character of that value ("\xa0" as a no-break space, "\x85" as
// a next-line), as backends that decode escapes to Latin-1 do.
func latin1(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			r = rune(s[i])
		}
		b.WriteRune(r)
		i += n
	}
	return b.String()
}

// percentDecode decodes every valid %XX escape of s and leaves invalid
// ones as they are, as lenient servers do.
func percentDecode(s string) string {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	b.WriteString(s[:i])
	for ; i < len(s); i++ {
		c := s[i]
		if c == '%' && i+2 < len(s) {
			hi, lo := unhex(s[i+1]), unhex(s[i+2])
			if hi >= 0 && lo >= 0 {
				b.WriteByte(byte(hi<<4 | lo))
				i += 2
				continue
			}
		}
		b.WriteByte(c)
	}
	return b.String()
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// stripParams removes path parameters: from each ';' to the end of its
// segment, as servlet containers do before they resolve dot segments.
func stripParams(p string) string {
	if strings.IndexByte(p, ';') < 0 {
		return p
	}
	var b strings.Builder
	b.Grow(len(p))
	for p != "" {
		seg, rest, more := strings.Cut(p, "/")
		if j := strings.IndexByte(seg, ';'); j >= 0 {
			seg = seg[:j]
		}
		b.WriteString(seg)
		if more {
			b.WriteByte('/')
		}
		p = rest
	}
	return b.String()
}

// decodeOverlong replaces overlong UTF-8 encodings of ASCII characters
// (two to four bytes for one code point below 0x80, such as C0 AE for
// ".") with the character, as decoders that do not check for overlong
// forms read them.
func decodeOverlong(s string) string {
	if strings.IndexByte(s, 0xC0) < 0 && strings.IndexByte(s, 0xC1) < 0 &&
		strings.IndexByte(s, 0xE0) < 0 && strings.IndexByte(s, 0xF0) < 0 {
		return s // every overlong form of ASCII starts with one of these
	}
	var b *strings.Builder
	for i := 0; i < len(s); {
		c, n := overlongAt(s[i:])
		if n == 0 {
			if b != nil {
				b.WriteByte(s[i])
			}
			i++
			continue
		}
		if b == nil {
			b = new(strings.Builder)
			b.Grow(len(s))
			b.WriteString(s[:i])
		}
		b.WriteByte(c)
		i += n
	}
	if b == nil {
		return s
	}
	return b.String()
}

// overlongAt returns the ASCII character that s starts with in an
// overlong multi-byte form, and the form's length (0 if it does not).
func overlongAt(s string) (byte, int) {
	cont := func(i int) bool { return i < len(s) && s[i]&0xC0 == 0x80 }
	switch {
	case len(s) >= 2 && (s[0] == 0xC0 || s[0] == 0xC1) && cont(1):
		return (s[0]&0x1F)<<6 | s[1]&0x3F, 2
	case len(s) >= 3 && s[0] == 0xE0 && s[1]&0xE0 == 0x80 && cont(1) && cont(2):
		if cp := int(s[1]&0x3F)<<6 | int(s[2]&0x3F); cp < 0x80 {
			return byte(cp), 3
		}
	case len(s) >= 4 && s[0] == 0xF0 && s[1]&0xF0 == 0x80 && cont(1) && cont(2) && cont(3):
		if cp := int(s[1]&0x3F)<<12 | int(s[2]&0x3F)<<6 | int(s[3]&0x3F); cp < 0x80 {
			return byte(cp), 4
		}
	}
	return 0, 0
}

// originalReadsOther reports whether the target the client sent, before
// a rewrite (handle_path, uri strip_prefix...) changed it, names another
// account than (id, ok) under some reading: a transport that passes the
// original target on (FastCGI's REQUEST_URI, a header with
// {http.request.orig_uri}) lets the backend read it. The prefix may be
// anywhere in it (a rewrite may have stripped what comes before), so
// every place a prefix stands must name Caddy's account.
func (ix *index) originalReadsOther(r *http.Request, id string, ok bool) bool {
	orig, found := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
	if !found {
		return false
	}
	sent := sentPath(&orig)
	if sent == "" || sent == sentPath(r) {
		return false
	}
	for _, acct := range ix.rawAccountsAnywhere(sent) {
		if !ok || acct != id {
			return true
		}
	}
	rs, converged := readings(sent)
	if !converged {
		return true
	}
	for i, p := range rs {
		if i > 0 && p == rs[i-1] {
			continue
		}
		for _, acct := range ix.accountsAnywhere(p) {
			if !ok || acct != id && !(i >= firstLetterReading && ix.sameLetters(acct, id)) {
				return true
			}
		}
	}
	return false
}

// rawAccountsAnywhere is rawAccountOf for a prefix anywhere in raw: the
// account after each place a prefix's segments stand.
func (ix *index) rawAccountsAnywhere(raw string) []string {
	var segs []string
	for seg := range strings.SplitSeq(raw, "/") {
		if seg != "" {
			segs = append(segs, seg)
		}
	}
	var out []string
	for _, preSegs := range ix.prefixSegs {
		for start := 0; start+len(preSegs) < len(segs); start++ {
			match := true
			for i, ps := range preSegs {
				if strings.ToLower(percentDecode(segs[start+i])) != ps {
					match = false
					break
				}
			}
			if match {
				out = append(out, percentDecode(segs[start+len(preSegs)]))
			}
		}
	}
	return out
}

// accountsAnywhere is accountOf for a prefix anywhere in p: the account
// after each place a prefix stands in p, cleaned and lower-cased as
// Caddy's path matchers read it.
func (ix *index) accountsAnywhere(p string) []string {
	if needsCleaning(p) {
		p = caddyhttp.CleanPath(p, true)
	}
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

// mightOwn reports whether r's path, or a path a backend reads from it,
// has one of the prefixes anywhere: whether a handler with them could
// act on r here, or further down its route after a prefix is stripped.
// It errs towards yes, and runs only for errors.
func (ix *index) mightOwn(r *http.Request, guard bool) bool {
	if ix.containsPrefix(r.URL.Path) {
		return true
	}
	if !guard || !guardedPath(r) {
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
func (ix *index) containsPrefix(p string) bool {
	if needsCleaning(p) {
		p = caddyhttp.CleanPath(p, true)
	}
	p = strings.ToLower(p)
	for _, pre := range ix.prefixes {
		if strings.Contains(p, pre) {
			return true
		}
	}
	return false
}
