package atomspherecors

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/rulestore"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves the routes of the rules stores on Caddy's admin
// endpoint, under its listener and origin checks (docs/store.md):
//
//	GET    /atomsphere_cors/<name>                   the store's status on this server
//	GET    /atomsphere_cors/<name>/accounts?after=&limit=
//	GET    /atomsphere_cors/<name>/accounts/<id>
//	PUT    /atomsphere_cors/<name>/accounts/<id>     a rules array; If-Match honoured
//	DELETE /atomsphere_cors/<name>/accounts/<id>     If-Match honoured
//	POST   /atomsphere_cors/<name>/import            NDJSON records
//	GET    /atomsphere_cors/<name>/export            NDJSON records
//	GET    /atomsphere_cors/explain?method=&url=&origin=  the explain command
type adminAPI struct {
	logger *zap.Logger // the audit log of writes
}

// Provision takes the admin routes' logger from the config being loaded,
// so that its logs (an audit file, say) receive the write entries.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger(a)
	return nil
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.atomsphere_cors",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the store routes and the explain command's route
// (explainapi.go).
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/atomsphere_cors/", Handler: caddy.AdminHandlerFunc(a.serve)},
		{Pattern: explainPath, Handler: caddy.AdminHandlerFunc(serveExplain)},
	}
}

const (
	defaultPage    = 100
	maxPage        = 10000
	importChunk    = 1000 // accounts per storage commit of an import
	ndjsonType     = "application/x-ndjson"
	maxImportLines = 10_000_000
)

func apiErr(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

func (a *adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.EscapedPath(), "/atomsphere_cors/")
	parts := strings.Split(rest, "/")
	s := rulestore.Lookup(parts[0])
	if s == nil {
		return apiErr(http.StatusNotFound, "no store %s on this server", q(parts[0]))
	}
	switch {
	case len(parts) == 1 || len(parts) == 2 && parts[1] == "":
		return only(r, http.MethodGet, func() error { return writeJSON(w, http.StatusOK, s.Status()) })
	case len(parts) == 2 && parts[1] == "accounts":
		return only(r, http.MethodGet, func() error {
			if err := notLoaded(s); err != nil {
				return err
			}
			return a.list(w, r, s)
		})
	case len(parts) == 3 && parts[1] == "accounts":
		id, err := rulestore.UnescapeID(parts[2])
		if err != nil {
			return apiErr(http.StatusBadRequest, "account ID %s: %v", q(parts[2]), err)
		}
		switch r.Method {
		case http.MethodGet:
			if err := notLoaded(s); err != nil {
				return err
			}
			acct, ok := s.Accounts().Get(id)
			if !ok {
				return apiErr(http.StatusNotFound, "no account %s in store %s", q(id), q(s.Name))
			}
			rules := rulestore.RulesOf(acct)
			w.Header().Set("ETag", rulestore.ETag(id, rules))
			return writeJSON(w, http.StatusOK, rules)
		case http.MethodPut:
			return a.put(w, r, s, id)
		case http.MethodDelete:
			return a.delete(w, r, s, id)
		}
		return apiErr(http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
	case len(parts) == 2 && parts[1] == "import":
		return only(r, http.MethodPost, func() error { return a.importNDJSON(w, r, s) })
	case len(parts) == 2 && parts[1] == "export":
		return only(r, http.MethodGet, func() error {
			if err := notLoaded(s); err != nil {
				return err
			}
			return a.export(w, s)
		})
	}
	return apiErr(http.StatusNotFound, "resource not found: %s", r.URL.Path)
}

func only(r *http.Request, method string, f func() error) error {
	if r.Method != method {
		return apiErr(http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
	}
	return f()
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(append(b, '\n'))
	return err
}

// decodeStrict decodes one JSON value with no unknown fields and nothing
// after it, as Caddy decodes a config.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more than one JSON value")
	}
	return nil
}

// notLoaded is the answer to a read of a store this server has never
// loaded (no snapshot, and no read of the storage has succeeded yet): it
// serves no account, which is not the store's content, so the list, the
// export and an account's rules answer 503 with the reason rather than
// an empty answer a backup would take for an empty store.
func notLoaded(s *rulestore.Store) error {
	source, lastErr := s.State()
	if source != "none" {
		return nil
	}
	if lastErr == "" {
		lastErr = "no read finished yet"
	}
	return apiErr(http.StatusServiceUnavailable, "store %s not loaded on this server (serving: none): it has no snapshot and has not yet read the storage: %s", q(s.Name), lastErr)
}

// storeError is the answer to a write the storage did not take.
func storeError(s *rulestore.Store, err error) error {
	var ce *rulestore.CommitError
	if errors.As(err, &ce) {
		return apiErr(http.StatusServiceUnavailable, "store %s: %v", q(s.Name), ce)
	}
	return apiErr(http.StatusServiceUnavailable, "store %s: nothing changed: %v", q(s.Name), err)
}

func (a *adminAPI) put(w http.ResponseWriter, r *http.Request, s *rulestore.Store, id string) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, rulestore.MaxRulesBody+1))
	if err != nil {
		return apiErr(http.StatusBadRequest, "reading body: %v", err)
	}
	if len(body) > rulestore.MaxRulesBody {
		return apiErr(http.StatusRequestEntityTooLarge, "body over %d bytes", rulestore.MaxRulesBody)
	}
	rules, err := policy.DecodeRules(body)
	if err != nil {
		return apiErr(http.StatusBadRequest, "account %s: body is not a JSON array of rules: %v", q(id), short(err.Error()))
	}
	acct, err := s.Compile(id, rules)
	if err != nil {
		return apiErr(http.StatusBadRequest, "%s", err.Error())
	}
	e, audit := a.edit(r, id)
	served := rulestore.RulesOf(*acct)
	e.After = served
	existed, err := s.Commit(r.Context(), []rulestore.Change{{ID: id, Rules: rules, Acct: acct, Check: e.Check, By: audit.by}})
	if errors.Is(err, rulestore.ErrUnchanged) {
		// The stored rules already: nothing written, no history entry.
		audit.refused(http.StatusOK, "unchanged: nothing written")
		w.Header().Set("ETag", rulestore.ETag(id, served))
		return writeJSON(w, http.StatusOK, served)
	}
	if err != nil {
		return editError(s, audit, err)
	}
	status := http.StatusCreated
	if existed[0] {
		status = http.StatusOK
	}
	audit.written(e.Before, served)
	w.Header().Set("ETag", rulestore.ETag(id, served))
	return writeJSON(w, status, served)
}

// edit is an admin write's If-Match (an account without a record
// has no representation: If-Match fails, RFC 9110 §13.1.1) and its
// audit log entry, on the logger of the admin routes.
func (a *adminAPI) edit(r *http.Request, id string) (*rulestore.Edit, writeAudit) {
	logger := a.logger
	if logger == nil {
		logger = caddy.Log().Named("admin.api.atomsphere_cors")
	}
	return &rulestore.Edit{ID: id, IfMatch: r.Header.Values("If-Match")},
		writeAudit{logger: logger, account: id, by: adminBy, client: r.RemoteAddr}
}

// adminBy is who the audit log and an account's history name for a
// write through the admin routes, which know no user.
const adminBy = "admin API"

// editError answers a write of one account that the commit refused (412)
// or the storage failed (503), and logs it as refused.
func editError(s *rulestore.Store, audit writeAudit, err error) error {
	status := writeStatus(err)
	audit.refused(status, err.Error())
	if status == http.StatusPreconditionFailed {
		return apiErr(status, "%v", err)
	}
	return storeError(s, err)
}

func (a *adminAPI) delete(w http.ResponseWriter, r *http.Request, s *rulestore.Store, id string) error {
	if err := policy.CheckAccountID(id); err != nil {
		return apiErr(http.StatusBadRequest, "%s", err.Error())
	}
	e, audit := a.edit(r, id)
	existed, err := s.Commit(r.Context(), []rulestore.Change{{ID: id, Delete: true, Check: e.Check, By: audit.by}})
	if err != nil {
		return editError(s, audit, err)
	}
	if !existed[0] {
		return apiErr(http.StatusNotFound, "no account %s in store %s", q(id), q(s.Name))
	}
	audit.written(e.Before, nil)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

type accountPage struct {
	Accounts []string `json:"accounts"`
	// The after value of the next page; empty on the last page.
	Next string `json:"next,omitempty"`
}

func (a *adminAPI) list(w http.ResponseWriter, r *http.Request, s *rulestore.Store) error {
	qs := r.URL.Query()
	limit := defaultPage
	if l := qs.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxPage {
			return apiErr(http.StatusBadRequest, "limit %s is not 1-%d", q(l), maxPage)
		}
		limit = n
	}
	ids, more := s.Accounts().IDsAfter(qs.Get("after"), limit)
	page := accountPage{Accounts: ids}
	if more && len(ids) > 0 {
		page.Next = ids[len(ids)-1]
	}
	return writeJSON(w, http.StatusOK, page)
}

// export streams the accounts this server serves, one record a line, in
// ID order, from one consistent state.
func (a *adminAPI) export(w http.ResponseWriter, s *rulestore.Store) error {
	v := s.Accounts()
	w.Header().Set("Content-Type", ndjsonType)
	bw := bufio.NewWriterSize(w, 1<<16)
	enc := json.NewEncoder(bw)
	var after string
	for {
		ids, more := v.IDsAfter(after, 4096)
		for _, id := range ids {
			acct, _ := v.Get(id)
			if err := enc.Encode(rulestore.Record{Account: id, Rules: rulestore.RulesOf(acct)}); err != nil {
				return err
			}
		}
		if !more || len(ids) == 0 {
			break
		}
		after = ids[len(ids)-1]
	}
	return bw.Flush()
}

// importLine is one line of an import as sent: the account ID kept raw,
// so that it is checked as written (json.Unmarshal would turn invalid
// UTF-8 and lone surrogates into U+FFFD), and the rules required.
type importLine struct {
	Account json.RawMessage `json:"account"`
	Rules   []policy.Rule   `json:"rules"`
}

// importNDJSON validates every line first (a bad line refuses the whole
// import and nothing is written), spooling the body to a file of the
// module's spool directory rather than to memory; then writes each
// account once, as its last line gives it, in commits of importChunk
// accounts. The body is bounded by the store's max_import_size (413).
func (a *adminAPI) importNDJSON(w http.ResponseWriter, r *http.Request, s *rulestore.Store) error {
	spool, err := rulestore.CreateSpool(s.DataDir)
	if err != nil {
		return apiErr(http.StatusInternalServerError, "store %s: import spool: %v", q(s.Name), err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	lastAt, err := spoolImport(w, r, s, spool)
	if err != nil {
		return err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return err
	}
	done, created, err := commitImport(r.Context(), s, spool, lastAt)
	if err != nil {
		return err
	}
	// New servers should not read a large import's accounts one by one.
	s.MaybeWriteBase(done >= rulestore.BaseEvery)
	return writeJSON(w, http.StatusOK, map[string]int{"imported": done, "created": created, "replaced": done - created})
}

// spoolImport reads and checks every line of an import's body, and
// writes the records to spool while no line has a problem. lastAt gives,
// for each account, the spooled record that sets it (its last line): an
// account named several times is written once.
func spoolImport(w http.ResponseWriter, r *http.Request, s *rulestore.Store, spool io.Writer) (lastAt map[string]int, err error) {
	limit := s.MaxImport.Load()
	sw := bufio.NewWriterSize(spool, 1<<16)
	var bad policy.Problems
	lines, n := 0, 0
	lastAt = map[string]int{}
	body := &countingReader{r: io.LimitReader(r.Body, limit+1)}
	rd := bufio.NewReaderSize(&progressReader{r: body, rc: http.NewResponseController(w)}, 1<<16)
	for lines < maxImportLines {
		line, tooLong, err := readLine(rd, rulestore.MaxRulesBody)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, apiErr(http.StatusBadRequest, "reading line %d: %v", lines+1, err)
		}
		if body.n > limit {
			return nil, apiErr(http.StatusRequestEntityTooLarge, "store %s: import refused, nothing written: the body is over %d bytes (the store's max_import_size)", q(s.Name), limit)
		}
		if len(line) > 0 || tooLong || !errors.Is(err, io.EOF) {
			lines++
		}
		if rec, ok := importRecord(s, &bad, lines, line, tooLong); ok && bad.Err() == nil {
			b, _ := json.Marshal(rec)
			_, _ = sw.Write(append(b, '\n'))
			lastAt[rec.Account] = n
			n++
		}
		if errors.Is(err, io.EOF) {
			break
		}
	}
	if err := bad.Err(); err != nil {
		return nil, apiErr(http.StatusBadRequest, "import refused, nothing written: %v", err)
	}
	if err := sw.Flush(); err != nil {
		return nil, apiErr(http.StatusInternalServerError, "store %s: import spool: %v", q(s.Name), err)
	}
	return lastAt, nil
}

// importRecord checks line number at of an import: a record to write, or
// its problems added to bad (ok false; also for a blank line).
func importRecord(s *rulestore.Store, bad *policy.Problems, at int, line []byte, tooLong bool) (rec rulestore.Record, ok bool) {
	place := policy.Place{Field: "import", Rule: at}
	switch {
	case tooLong:
		bad.Add(place, fmt.Errorf("line %d: longer than %d bytes", at, rulestore.MaxRulesBody))
		return rec, false
	case len(bytes.TrimSpace(line)) == 0:
		return rec, false
	case at == 1 && bytes.HasPrefix(line, []byte("\xef\xbb\xbf")):
		bad.Add(place, errors.New("line 1: starts with a UTF-8 byte order mark (EF BB BF), which NDJSON does not allow: save the file without it"))
		return rec, false
	}
	var il importLine
	if err := decodeStrict(line, &il); err != nil {
		bad.Add(place, fmt.Errorf("line %d: not a JSON record {\"account\": ..., \"rules\": [...]}: %s", at, short(err.Error())))
		return rec, false
	}
	id, err := importID(il.Account)
	if err != nil {
		bad.Add(place, fmt.Errorf("line %d: %w", at, err))
		return rec, false
	}
	if il.Rules == nil {
		bad.Add(place, fmt.Errorf("line %d: account %s: \"rules\" missing or null: every line gives the account's rules, [] for none", at, q(id)))
		return rec, false
	}
	if _, err := s.Compile(id, il.Rules); err != nil {
		var rep *policy.Report
		if !errors.As(err, &rep) {
			bad.Add(place, fmt.Errorf("line %d: %w", at, err))
			return rec, false
		}
		for _, e := range rep.List {
			bad.Add(place, fmt.Errorf("line %d: %w", at, e))
		}
		for range rep.More {
			bad.Skip()
		}
		return rec, false
	}
	return rulestore.Record{Account: id, Rules: il.Rules}, true
}

// commitImport commits the spooled records, importChunk at a time, each
// account from its last line (lastAt); done counts the accounts written,
// created those that were new.
func commitImport(ctx context.Context, s *rulestore.Store, spool io.Reader, lastAt map[string]int) (done, created int, err error) {
	dec := json.NewDecoder(bufio.NewReaderSize(spool, 1<<16))
	batch := make([]rulestore.Change, 0, importChunk)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		existed, err := s.Commit(ctx, batch)
		if err != nil {
			var ce *rulestore.CommitError
			if errors.As(err, &ce) {
				return apiErr(http.StatusServiceUnavailable, "store %s: import stopped: %d accounts written before a batch of %d, of which %v; the rest of the import not written", q(s.Name), done, len(batch), ce)
			}
			return apiErr(http.StatusServiceUnavailable, "store %s: import stopped: %d accounts written, the rest of the import not: %v", q(s.Name), done, err)
		}
		for _, e := range existed {
			if !e {
				created++
			}
		}
		done += len(batch)
		batch = batch[:0]
		return nil
	}
	for i := 0; dec.More(); i++ {
		var rec rulestore.Record
		if err := dec.Decode(&rec); err != nil {
			return done, created, err
		}
		if lastAt[rec.Account] != i {
			continue // named again further on: the last line wins
		}
		acct, err := s.Compile(rec.Account, rec.Rules)
		if err != nil {
			return done, created, err
		}
		batch = append(batch, rulestore.Change{ID: rec.Account, Rules: rec.Rules, Acct: acct})
		if len(batch) == importChunk {
			if err := flush(); err != nil {
				return done, created, err
			}
		}
	}
	return done, created, flush()
}

// importID reads an import line's account ID as written: a JSON string
// whose bytes are valid UTF-8 and whose \u escapes name no lone UTF-16
// surrogate, which a PUT's path could not carry either (RFC 8259 §8.2:
// such strings are not interoperable; Go's decoder would store U+FFFD in
// their place, another account).
func importID(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", errors.New(`"account" missing or null`)
	}
	if raw[0] != '"' {
		return "", fmt.Errorf("account ID %s is not a JSON string", short(string(raw)))
	}
	if !utf8.Valid(raw) {
		return "", fmt.Errorf("account %s (as written): account ID is not valid UTF-8", strconv.Quote(string(raw[1:len(raw)-1])))
	}
	for i := 0; i+1 < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		if raw[i+1] != 'u' || i+6 > len(raw) {
			i++ // a two-character escape: skip its second character
			continue
		}
		r1, ok := hex4(raw[i+2 : i+6])
		switch {
		case !ok:
		case utf16.IsSurrogate(r1):
			if r1 < 0xDC00 && i+12 <= len(raw) && raw[i+6] == '\\' && raw[i+7] == 'u' {
				if r2, ok := hex4(raw[i+8 : i+12]); ok && r2 >= 0xDC00 && r2 <= 0xDFFF {
					i += 11 // a surrogate pair: one character
					continue
				}
			}
			return "", fmt.Errorf("account %s (as written): account ID has a lone UTF-16 surrogate %s, which is not valid UTF-8", short(string(raw)), raw[i:i+6])
		}
		i += 5
	}
	var id string
	if err := json.Unmarshal(raw, &id); err != nil {
		return "", fmt.Errorf("account ID: %s", short(err.Error()))
	}
	return id, nil
}

func hex4(b []byte) (rune, bool) {
	v, err := strconv.ParseUint(string(b), 16, 32)
	return rune(v), err == nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// importReadIdle is how long an import's client may send nothing. Caddy's
// admin server gives a request 10 s in all to send its body, which an
// import of 10^6 accounts (250 MB) does not fit in; an import's body
// may take as long as it keeps coming.
const importReadIdle = 30 * time.Second

// progressReader moves the connection's read deadline forward as the
// body comes in, at most once a second.
type progressReader struct {
	r    io.Reader
	rc   *http.ResponseController
	last time.Time
}

func (p *progressReader) Read(b []byte) (int, error) {
	if now := time.Now(); now.Sub(p.last) >= time.Second {
		p.last = now
		_ = p.rc.SetReadDeadline(now.Add(importReadIdle)) // unsupported: Caddy's 10 s stay
	}
	return p.r.Read(b)
}

// readLine reads one line, without its end; a line longer than limit is
// consumed and reported as too long.
func readLine(rd *bufio.Reader, limit int) (line []byte, tooLong bool, err error) {
	for {
		chunk, isPrefix, err := rd.ReadLine()
		if len(line)+len(chunk) > limit {
			tooLong = true
			line = nil
		} else if !tooLong {
			line = append(line, chunk...)
		}
		if err != nil || !isPrefix {
			return line, tooLong, err
		}
	}
}

var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)
