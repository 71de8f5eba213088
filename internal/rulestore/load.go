package rulestore

// Reading the rules store: polls, the log since the last seen change, a
// full read, and the records that cannot be served (see the layout in
// store.go).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/quote"
)

// poll brings the accounts up to the store's head: nothing but one read
// of head when nothing changed, the log entries and changed accounts
// otherwise, every account when this server is too far behind (or has
// never read the store).
func (s *Store) poll(ctx context.Context) error {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	st, logger := s.storage()
	s.mu.Lock()
	gen0, last, epoch, fromStore := s.gen, s.seq, s.epoch, s.source != "none"
	s.mu.Unlock()

	hctx, cancel := context.WithTimeout(ctx, headReadTimeout)
	head, err := readHead(hctx, st, s.keys)
	cancel()
	if err != nil {
		return err
	}
	if head.Epoch == "" && epoch != "" {
		// A store this server has read cannot lose its head but by the
		// storage being emptied or unmounted: keep the rules read.
		return errHeadMissing(s.keys)
	}
	if fromStore && head.Epoch == epoch && head.Seq == last && len(s.unreadableIDs()) == 0 {
		s.mu.Lock()
		s.source = "store"
		s.mu.Unlock()
		return nil
	}
	if !fromStore || head.Epoch != epoch || head.Seq < last || head.Seq-last > logRetain/2 {
		// The base is a cache of the records: its accounts are checked
		// against the records' keys, listed after head was read, so
		// that an account no record holds is never served from it.
		keys, err := listAccounts(ctx, st, s.keys.accountsDir())
		if err != nil {
			return err
		}
		listed, ignored := s.recordIDs(st, keys)
		base, dropped, err := s.loadBase(ctx, st, logger, head, gen0, listed)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				logger.Warn("store base not used: reading every account", zap.String("store", s.Name), zap.Error(err))
			}
			return s.loadAll(ctx, st, logger, head, gen0)
		}
		// Records the base lacks are read at once, with the log after it.
		v := s.view.Load()
		var missing []string
		s.mu.Lock()
		for id := range listed {
			if _, ok := v.Get(id); !ok && s.refused[id] == "" {
				missing = append(missing, id)
				s.unreadable[id] = max(s.unreadable[id], unreadableAfter)
			}
		}
		s.mu.Unlock()
		named := map[string]bool{}
		if err := s.readChanges(ctx, st, logger, head, base, gen0, named); err != nil {
			return err
		}
		s.noteBaseCheck(logger, base, dropped, missing, ignored, named)
		return nil
	}
	return s.readChanges(ctx, st, logger, head, last, gen0, nil)
}

// recordIDs reads the account IDs of the record keys listed. A key that is
// not the canonical escape of its ID (escapeID), such as one written by
// hand as "lowerenc%c3%a9", is no record of this store: it is ignored,
// and reported. Temporary files of file_system are skipped.
func (s *Store) recordIDs(st certmagic.Storage, keys []string) (ids map[string]bool, ignored []string) {
	fileStorage, _ := st.(*certmagic.FileStorage)
	ids = make(map[string]bool, len(keys))
	for _, k := range keys {
		seg := k[strings.LastIndexByte(k, '/')+1:]
		if isTempName(fileStorage, k) {
			continue
		}
		id, err := UnescapeID(seg)
		if err != nil || EscapeID(id) != seg {
			ignored = append(ignored, seg)
			continue
		}
		ids[id] = true
	}
	return ids, ignored
}

// noteBaseCheck reports what checking the base against the records found:
// accounts of the base without a record (not served), records the base
// lacked (read), neither of them changed in the log since the base, and
// keys that are not a record of this store (ignored).
func (s *Store) noteBaseCheck(logger *zap.Logger, baseSeq uint64, dropped, missing, ignored []string, named map[string]bool) {
	var noRecord, notInBase []string
	for _, id := range dropped {
		if !named[id] {
			noRecord = append(noRecord, id)
		}
	}
	for _, id := range missing {
		if !named[id] {
			notInBase = append(notInBase, id)
		}
	}
	slices.Sort(noRecord)
	slices.Sort(notInBase)
	slices.Sort(ignored)
	var msg string
	if len(noRecord)+len(notInBase) > 0 {
		msg = fmt.Sprintf("the base (change %d) disagrees with the records: %d accounts in the base have no record (not served)%s, %d records are not in the base (read from the records)%s",
			baseSeq, len(noRecord), someIDs(noRecord), len(notInBase), someIDs(notInBase))
		logger.Error("store base disagrees with the records: serving the records", zap.String("store", s.Name), zap.String("problem", msg))
	}
	if len(ignored) > 0 {
		logger.Error("store keys that are no record of this store ignored", zap.String("store", s.Name), zap.Strings("keys", ignored[:min(len(ignored), 20)]))
	}
	s.mu.Lock()
	s.baseMismatch = msg
	s.ignoredKeys = ignored[:min(len(ignored), 20):min(len(ignored), 20)]
	s.mu.Unlock()
}

func someIDs(ids []string) string {
	if len(ids) == 0 {
		return ""
	}
	out := make([]string, 0, 5)
	for _, id := range ids[:min(len(ids), 5)] {
		out = append(out, quote.Value(id))
	}
	more := ""
	if len(ids) > 5 {
		more = ", ..."
	}
	return " (" + strings.Join(out, ", ") + more + ")"
}

// readChanges reads the changes after seq last up to head: the log
// entries, then the accounts they name. Like loadAll it is one pipeline
// over shared results (read, compile, sort, apply), kept in one function.
func (s *Store) readChanges(ctx context.Context, st certmagic.Storage, logger *zap.Logger, head Head, last, gen0 uint64, named map[string]bool) error {
	seen := named
	if seen == nil {
		seen = map[string]bool{}
	}
	var ids []string
	for seq := last + 1; seq <= head.Seq; seq++ {
		b, err := st.Load(ctx, s.keys.log(seq))
		if errors.Is(err, fs.ErrNotExist) {
			return s.loadAll(ctx, st, logger, head, gen0)
		}
		if err != nil {
			return err
		}
		var e LogEntry
		if err := json.Unmarshal(b, &e); err != nil {
			logger.Error("store log entry unreadable: reading every account", zap.String("store", s.Name), zap.Uint64("seq", seq), zap.Error(err))
			return s.loadAll(ctx, st, logger, head, gen0)
		}
		for _, id := range e.Accounts {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	// Read the changed accounts side by side (an import changes
	// thousands), compiling them one at a time.
	changes := make(map[string]*policy.Account, len(ids))
	refused := map[string]string{}
	cache := policy.NewMethodCache()
	var mu sync.Mutex
	for _, id := range s.unreadableIDs() {
		if !seen[id] {
			ids = append(ids, id)
		}
	}
	failed := map[string]error{}
	err := inParallel(ctx, len(ids), func(i int) error {
		id := ids[i]
		b, err := st.Load(ctx, s.keys.account(id))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			mu.Lock()
			failed[id] = err
			mu.Unlock()
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			changes[id] = nil
			return nil
		}
		a, why := compileRecord(id, b, cache)
		if why != "" {
			refused[id] = why
		}
		changes[id] = a
		return nil
	})
	if err != nil {
		return err
	}
	if err := s.isolateUnreadable(failed, len(ids), changes, refused); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range changes {
		if _, ok := failed[id]; !ok {
			delete(s.unreadable, id)
		}
		if s.local[id] > gen0 {
			delete(changes, id) // written here since the poll began: newer than what it read
			delete(refused, id)
		} else if _, ok := refused[id]; !ok {
			delete(s.refused, id)
		}
	}
	s.noteRefused(logger, refused)
	if len(changes) > 0 {
		s.view.Store(s.view.Load().with(changes))
		s.dirty = true
	}
	s.seq, s.epoch, s.source = head.Seq, head.Epoch, "store"
	s.forgetLocal(gen0)
	return nil
}

// loadAll reads every account of the store. It is one pipeline (list the
// records; read and compile them in parallel; sort what comes back into
// accounts, refused records, unreadable ones and keys of no record;
// install), kept in one function because the stages share that sorting.
func (s *Store) loadAll(ctx context.Context, st certmagic.Storage, logger *zap.Logger, head Head, gen0 uint64) error {
	keys, err := listAccounts(ctx, st, s.keys.accountsDir())
	if err != nil {
		return err
	}
	type loaded struct {
		id  string
		a   *policy.Account
		why string // the record was refused
		err error
		// ignored: id is a key that is no record of this store
		ignored bool
	}
	// Read and compile in parallel (a network storage answers each read
	// in a round trip; compiling takes the CPUs there are), each worker
	// with its own method sets.
	fileStorage, _ := st.(*certmagic.FileStorage)
	in := make(chan string)
	out := compileEach(storageWorkers, in, func(cache *policy.MethodCache, k string, emit func(loaded)) {
		seg := k[strings.LastIndexByte(k, '/')+1:]
		id, err := UnescapeID(seg)
		if err != nil || EscapeID(id) != seg {
			// Not a key this store wrote: an account's record is at
			// the canonical escape of its ID alone.
			if !isTempName(fileStorage, k) {
				emit(loaded{id: seg, ignored: true})
			}
			return
		}
		b, err := st.Load(ctx, k)
		if err != nil {
			emit(loaded{id: id, err: err})
			return
		}
		a, why := compileRecord(id, b, cache)
		if why != "" && isTempName(fileStorage, k) {
			// A file being written, listed before its rename: not an
			// account (docs/store.md, "Faults").
			return
		}
		emit(loaded{id: id, a: a, why: why})
	})
	go func() {
		defer close(in)
		for _, k := range keys {
			select {
			case in <- k:
			case <-ctx.Done():
				return
			}
		}
	}()
	accounts := make(map[string]policy.Account, len(keys))
	refused := map[string]string{}
	var firstErr error
	failed := map[string]error{}
	var ignored []string
	for l := range out {
		switch {
		case l.ignored:
			ignored = append(ignored, l.id)
		case errors.Is(l.err, fs.ErrNotExist): // deleted since listed
		case l.err != nil && ctx.Err() == nil:
			failed[l.id] = l.err
		case l.err != nil:
			if firstErr == nil {
				firstErr = l.err
			}
		case firstErr != nil:
		case l.why != "":
			refused[l.id] = l.why
		default:
			accounts[l.id] = *l.a
		}
	}
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	if firstErr == nil {
		firstErr = s.isolateUnreadable(failed, len(keys), nil, refused)
	}
	if firstErr != nil {
		return firstErr
	}
	s.install(logger, accounts, refused, head, gen0)
	s.noteBaseCheck(logger, 0, nil, nil, ignored, nil)
	s.mu.Lock()
	for id := range s.unreadable {
		if _, ok := failed[id]; !ok {
			delete(s.unreadable, id)
		}
	}
	s.mu.Unlock()
	logger.Info("store loaded", zap.String("store", s.Name), zap.Int("accounts", len(accounts)), zap.Uint64("seq", head.Seq))
	return nil
}

// install makes accounts, as the store held them at head, the accounts
// served, keeping what this server wrote since gen0.
func (s *Store) install(logger *zap.Logger, accounts map[string]policy.Account, refused map[string]string, head Head, gen0 uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.view.Load()
	for id, g := range s.local {
		if g > gen0 { // written here since the load began
			if a, ok := cur.Get(id); ok {
				accounts[id] = a
			} else {
				delete(accounts, id)
			}
			delete(refused, id)
		}
	}
	s.refused = map[string]string{}
	s.noteRefused(logger, refused)
	s.view.Store(newView(accounts))
	s.seq, s.epoch, s.source, s.dirty = head.Seq, head.Epoch, "store", true
	s.forgetLocal(gen0)
}

// recheckRefused has the next poll read the records refused in a base or
// snapshot again: a record that could not be read when it was written
// may be readable now, and one that still fails is refused afresh. s.mu
// is held.
func (s *Store) recheckRefused(refused map[string]string) {
	for id := range refused {
		s.unreadable[id] = max(s.unreadable[id], unreadableAfter)
	}
}

// unreadableAfter is how many polls in a row a record must fail to read,
// while the rest of the storage answers, before its account alone is
// refused; until then the poll fails as a whole (and is retried), as for
// a storage that does not answer.
const unreadableAfter = 3

// unreadableIDs are the accounts whose records failed to read, each
// read again at every poll.
func (s *Store) unreadableIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for id, n := range s.unreadable {
		if n >= unreadableAfter {
			ids = append(ids, id)
		}
	}
	return ids
}

// isolateUnreadable decides about records that failed to read (of total
// read): a few that failed unreadableAfter polls in a row are refused
// alone (allowing nothing, listed as refused, read again at every poll),
// so that one record the storage cannot give, such as a key it cannot
// hold, does not stop every server from following the store. Otherwise
// the poll fails.
func (s *Store) isolateUnreadable(failed map[string]error, total int, changes map[string]*policy.Account, refused map[string]string) error {
	if len(failed) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var first error
	for id, err := range failed {
		if len(failed) <= max(10, total/100) {
			s.unreadable[id]++
		}
		if s.unreadable[id] < unreadableAfter && first == nil {
			first = fmt.Errorf("reading account %s: %v", quote.Value(id), err)
		}
	}
	if first != nil {
		return first
	}
	for id, err := range failed {
		if changes != nil {
			changes[id] = nil
		}
		refused[id] = "record unreadable, read again at every poll: " + quote.Message(err.Error())
	}
	return nil
}

// listAccounts lists the account keys under dir. certmagic's
// file_system List walks the directory and fails as a whole when a file
// vanishes as it walks, which every write's temporary file does; so a
// file_system directory is read in one go, and for every storage an
// error is an error, not an empty store, unless the directory truly is
// not there.
func listAccounts(ctx context.Context, st certmagic.Storage, dir string) ([]string, error) {
	var keys []string
	var err error
	if fst, ok := st.(*certmagic.FileStorage); ok {
		var entries []os.DirEntry
		entries, err = os.ReadDir(fst.Filename(dir))
		for _, e := range entries {
			keys = append(keys, dir+"/"+e.Name())
		}
	} else {
		keys, err = st.List(ctx, dir, false)
	}
	if errors.Is(err, fs.ErrNotExist) && !st.Exists(ctx, dir) {
		return nil, nil // no account was ever written
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %v", dir, err)
	}
	return keys, nil
}

// isTempName reports whether key, whose last segment does not hold a
// valid record, is a temporary file that file_system writes a key to
// before renaming it (os.CreateTemp's digits): such a key is not an
// account, and is skipped rather than refused. An account ID of digits
// has a key of the same shape, so only a file younger than tempFileAge
// is taken for one (a temporary file lives for a write). On other
// storages every key is one.
func isTempName(fst *certmagic.FileStorage, key string) bool {
	seg := key[strings.LastIndexByte(key, '/')+1:]
	if fst == nil || seg == "" {
		return false
	}
	for i := 0; i < len(seg); i++ {
		if seg[i] < '0' || seg[i] > '9' {
			return false
		}
	}
	info, err := os.Stat(fst.Filename(key))
	return err != nil || time.Since(info.ModTime()) < tempFileAge
}

// tempFileAge is how young a file must be to be taken for a temporary
// file of file_system rather than a record.
const tempFileAge = time.Minute

// compileRecord compiles a stored account with cache, which only its
// caller uses; a record that does not read or does not validate is
// refused (nil, and why).
func compileRecord(id string, b []byte, cache *policy.MethodCache) (*policy.Account, string) {
	var rec Record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return nil, "unreadable record: " + quote.Message(err.Error())
	}
	if rec.Account != id {
		return nil, fmt.Sprintf("record names account %s", quote.Value(rec.Account))
	}
	a, err := compileWith(id, rec.Rules, cache)
	if err != nil {
		return nil, err.Error()
	}
	return a, ""
}

// Compile checks and compiles one account as a config's account is,
// sharing the store's method sets.
func (s *Store) Compile(id string, rules []policy.Rule) (*policy.Account, error) {
	if n := len(EscapeID(id)); n > MaxKeySegment && policy.CheckAccountID(id) == nil {
		var p policy.Problems
		p.Add(policy.Place{Field: "accounts", Account: id, Rule: -1}, fmt.Errorf(
			"account %s: account ID too long for a store: %d bytes as a storage key, at most %d (letters, digits, -, _ and . take one byte, other bytes three)",
			quote.Value(id), n, MaxKeySegment))
		return nil, p.Err()
	}
	s.mu.Lock()
	a, err := compileWith(id, rules, s.cache)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	// What the store takes, its export gives back as one import line
	// and its GET as one PUT body: both are bounded by maxRulesBody, so
	// an account over it could be written but never restored.
	if line, _ := json.Marshal(Record{Account: id, Rules: RulesOf(*a)}); len(line)+1 > MaxRulesBody {
		var p policy.Problems
		p.Add(policy.Place{Field: "accounts", Account: id, Rule: -1}, fmt.Errorf(
			"account %s: its rules, as export writes them (methods included), take %d bytes, over the %d of one import line or PUT body",
			quote.Value(id), len(line)+1, MaxRulesBody))
		return nil, p.Err()
	}
	return a, nil
}

// MaxKeySegment bounds an account's storage key segment (escapeID), within
// the 255 bytes a file name can have.
const MaxKeySegment = 200

// compileWith is compile with a method cache that only its caller uses,
// so that loads can compile accounts in parallel.
func compileWith(id string, rules []policy.Rule, cache *policy.MethodCache) (*policy.Account, error) {
	var p policy.Problems
	if err := policy.CheckAccountID(id); err != nil {
		p.Add(policy.Place{Field: "accounts", Account: id, Rule: -1}, err)
		return nil, p.Err()
	}
	a := policy.CompileAccount(id, rules, cache, &p)
	if err := p.Err(); err != nil {
		return nil, err
	}
	return &a, nil
}

// noteRefused logs newly refused records; s.mu is held.
func (s *Store) noteRefused(logger *zap.Logger, refused map[string]string) {
	for id, why := range refused {
		if s.refused[id] != why {
			logger.Error("store record refused: the account allows no origin until it is written again",
				zap.String("store", s.Name), zap.String("account", id), zap.String("problem", why))
		}
		if len(s.refused) < 1000 {
			s.refused[id] = why
		}
	}
}

// forgetLocal drops the marks of local writes that a poll begun after
// them has read; s.mu is held.
func (s *Store) forgetLocal(gen0 uint64) {
	for id, g := range s.local {
		if g <= gen0 {
			delete(s.local, id)
		}
	}
}

func readHead(ctx context.Context, st certmagic.Storage, keys storageKeys) (Head, error) {
	var h Head
	b, err := st.Load(ctx, keys.head())
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("store head %s unreadable: %v", keys.head(), err)
	}
	return h, nil
}
