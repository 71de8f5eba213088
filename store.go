package atomspherecors

import (
	"atomspherecors/internal/policy"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// The store's layout in the storage, under atomsphere_cors/<name>/:
//
//	head            {"seq": N, "epoch": "..."}: the last committed change
//	log/<seq>       {"accounts": [...]}: the accounts change seq touched
//	accounts/<id>   {"account": "<id>", "rules": [...]}: one account
//	base            every account as of one seq (storebase.go)
//	base-seq        {"seq": N, "epoch": "..."}: the seq of base
//	history/<id>    an account's last changes by a user (storeedit.go)
//
// A poll reads head alone when nothing changed; otherwise the log
// entries since the last seen seq, and the accounts they name. A server
// that starts, or is too far behind, reads base and the log after it,
// or else every account. A writer
// holds the storage lock atomsphere_cors_<name> and writes the log
// entry, then the accounts, then head, so a writer killed half way
// leaves a log entry past head that the next writer adopts.
type storeHead struct {
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch"`
}

type logEntry struct {
	Accounts []string `json:"accounts"`
}

// record is one account as stored, and one line of import and export.
type record struct {
	Account string        `json:"account"`
	Rules   []policy.Rule `json:"rules"`
}

// logRetain is the number of log entries kept: a server further behind
// than that reads every account again.
const logRetain = 10000

// storageKeys names one store's keys.
type storageKeys string

func (k storageKeys) head() string        { return string(k) + "head" }
func (k storageKeys) accountsDir() string { return string(k) + "accounts" }
func (k storageKeys) account(id string) string {
	return string(k) + "accounts/" + escapeID(id)
}
func (k storageKeys) log(seq uint64) string { return string(k) + "log/" + fmt.Sprintf("%020d", seq) }
func (k storageKeys) history(id string) string {
	return string(k) + "history/" + escapeID(id)
}
func (k storageKeys) base() string    { return string(k) + "base" }
func (k storageKeys) baseSeq() string { return string(k) + "base-seq" }

// escapeID makes an account ID one safe storage key segment: bytes
// other than letters, digits, "-", "_" and "." are percent-encoded, as
// is a leading ".".
func escapeID(id string) string {
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' && i > 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

func unescapeID(seg string) (string, error) { return url.PathUnescape(seg) }

// accountStore is the live state of one store on this server, shared by
// every handler that uses it.
type accountStore struct {
	name string
	key  string // the pool key
	keys storageKeys

	view atomic.Pointer[accountsView]

	maxImport atomic.Int64 // an import's largest body, as the newest handler sets it

	mu       sync.Mutex // everything below, and applying changes
	users    []storeUser
	interval time.Duration
	seq      uint64 // the last change of the store read
	epoch    string
	source   string    // "none", "snapshot" or "store"
	loadedAt time.Time // last successful read of the store
	openedAt time.Time // when this server opened the store

	// importBaseAt is when an import last had the base written.
	importBaseAt time.Time
	failures     int
	lastErr      string
	gen          uint64            // counts local writes
	local        map[string]uint64 // account -> gen of its last local write
	refused      map[string]string // account -> why its record was refused
	unreadable   map[string]int    // account -> polls in a row its record failed to read
	cache        *policy.MethodCache
	dirty        bool // changed since the snapshot was written
	snapAt       time.Time
	snapBusy     bool
	baseNext     uint64    // the seq from which to write a new base
	baseAt       time.Time // when this server last set out to write it
	baseBusy     bool
	// What the last check of the base against the records found, and
	// keys under accounts/ that are no record of this store.
	baseMismatch string
	ignoredKeys  []string

	writeMu sync.Mutex // one local writer at a time (the storage lock orders servers)
	snapMu  sync.Mutex // one snapshot written at a time
	baseWG  sync.WaitGroup

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

type storeUser struct {
	owner  any // the handler or page using the store; nil for the opener
	st     certmagic.Storage
	logger *zap.Logger
}

// newAccountStore is a store that serves no account yet, read from st.
func newAccountStore(name, key string, st certmagic.Storage, logger *zap.Logger, interval time.Duration) *accountStore {
	s := &accountStore{
		name: name, key: key, keys: storageKeys("atomsphere_cors/" + name + "/"),
		interval: interval, source: "none",
		local: map[string]uint64{}, refused: map[string]string{}, unreadable: map[string]int{},
		cache:    policy.NewMethodCache(),
		done:     make(chan struct{}),
		users:    []storeUser{{st: st, logger: logger}},
		openedAt: time.Now(),
	}
	s.view.Store(newView(nil))
	s.maxImport.Store(defaultMaxImportSize)
	return s
}

// openStore starts a store: from the local snapshot if there is one,
// then one read of the store (bounded in time), then the poller.
func openStore(name, key string, st certmagic.Storage, logger *zap.Logger, interval time.Duration) *accountStore {
	s := newAccountStore(name, key, st, logger, interval)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	cleanSpool.Do(func() { removeStaleSpools(logger) })
	if err := s.loadSnapshot(); err != nil {
		logger.Warn("local snapshot of the store not used", zap.String("store", name), zap.Error(err))
	}
	storeMetricsOpen(name)
	if s.source != "none" {
		storeLoaded(name, s.view.Load().count) // from the snapshot
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	start := time.Now()
	err := s.poll(ctx)
	cancel()
	storePolled(name, time.Since(start))
	storeSynced(name, time.Now(), err)
	if err == nil {
		storeLoaded(name, s.view.Load().count)
	}
	s.afterPoll(err)
	registerStore(s)
	go s.run()
	return s
}

func (s *accountStore) addUser(owner any, st certmagic.Storage, logger *zap.Logger, interval time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.users) == 1 && s.users[0].owner == nil {
		s.users = s.users[:0] // the opener's placeholder
	}
	s.users = append(s.users, storeUser{owner: owner, st: st, logger: logger})
	s.interval = interval
	registerStore(s)
}

func (s *accountStore) removeUser(owner any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, u := range s.users {
		if u.owner == owner && len(s.users) > 1 {
			s.users = append(s.users[:i:i], s.users[i+1:]...)
			return
		}
	}
}

// storage is the storage of the newest handler using the store (each
// config loads its own, with the same settings).
func (s *accountStore) storage() (certmagic.Storage, *zap.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[len(s.users)-1]
	return u.st, u.logger
}

func (s *accountStore) logger() *zap.Logger { _, l := s.storage(); return l }

// loaded reports whether the store serves accounts read from the
// storage or a snapshot, rather than none yet.
func (s *accountStore) loaded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.source != "none"
}

// reasonStoreNotLoaded is explain's reason for a denial by a handler whose
// store has never been loaded on this server (docs/store.md, "Faults").
const reasonStoreNotLoaded = "store not loaded: no account is served until the store's first read (account has no rules)"

// Account is the per-request lookup (policy.Source): lock-free.
func (s *accountStore) Account(id string) policy.Account {
	a, _ := s.view.Load().get(id)
	return a
}

// Destruct stops the poller and writes the snapshot.
func (s *accountStore) Destruct() error {
	s.cancel()
	<-s.done
	if unregisterStore(s) {
		storeMetricsClose(s.name)
	}
	s.snapMu.Lock() // a snapshot being written in the background ends first
	s.snapMu.Unlock()
	s.baseWG.Wait() // and a base
	s.mu.Lock()
	dirty := s.dirty && s.source == "store"
	s.mu.Unlock()
	if dirty {
		if err := s.writeSnapshot(); err != nil {
			s.logger().Error("writing the local snapshot of the store", zap.String("store", s.name), zap.Error(err))
		}
	}
	return nil
}

// run polls until the store is destructed, backing off while the
// storage fails, and writes the snapshot now and then.
func (s *accountStore) run() {
	defer close(s.done)
	t := time.NewTimer(s.pollDelay())
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(s.ctx, fullReadTimeout)
		start := time.Now()
		err := s.poll(ctx)
		cancel()
		if s.ctx.Err() != nil {
			return
		}
		storePolled(s.name, time.Since(start))
		storeSynced(s.name, time.Now(), err)
		if err == nil {
			storeLoaded(s.name, s.view.Load().count)
			s.maybeWriteBase(false)
		}
		s.afterPoll(err)
		s.maybeWriteSnapshot()
		// Polls start an interval apart, however long one took.
		t.Reset(max(0, s.pollDelay()-time.Since(start)))
	}
}

// Time limits of a poll: reading head, the one read of an idle poll,
// tells a storage that does not answer; reading every account of a
// large store, or the base and the log after it, takes longer.
const (
	headReadTimeout = 30 * time.Second
	fullReadTimeout = 10 * time.Minute
)

// maybeWriteSnapshot writes the snapshot in the background when the
// accounts changed and the last one is snapshotEvery old, so that polls
// are not held up by it.
func (s *accountStore) maybeWriteSnapshot() {
	s.mu.Lock()
	due := s.dirty && s.source == "store" && !s.snapBusy && time.Since(s.snapAt) >= snapshotEvery
	if due {
		s.snapBusy = true
	}
	s.mu.Unlock()
	if !due {
		return
	}
	go func() {
		if err := s.writeSnapshot(); err != nil {
			s.logger().Error("writing the local snapshot of the store", zap.String("store", s.name), zap.Error(err))
		}
		s.mu.Lock()
		s.snapBusy = false
		s.mu.Unlock()
	}()
}

// maxBackoff bounds the wait between polls of a failing storage.
const maxBackoff = 30 * time.Second

func (s *accountStore) pollDelay() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.interval
	for i := 0; i < s.failures && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, max(maxBackoff, s.interval))
}

// afterPoll records a poll's outcome and logs changes of state, never
// once per poll: the first failure as a warning, then an error at most
// once a minute, and the recovery.
func (s *accountStore) afterPoll(err error) {
	s.mu.Lock()
	failures, since, source, seq := s.failures, s.loadedAt, s.source, s.seq
	if err == nil {
		s.failures, s.lastErr = 0, ""
		s.loadedAt = time.Now()
	} else {
		s.failures++
		s.lastErr = err.Error()
	}
	s.mu.Unlock()
	logger := s.logger()
	fields := []zap.Field{zap.String("store", s.name), zap.String("serving", source), zap.Uint64("seq", seq)}
	switch {
	case err == nil && failures > 0:
		logger.Info("store readable again", append(fields, zap.Int("failed_polls", failures))...)
	case err != nil && failures == 0:
		logger.Warn("store unreadable: serving the last rules loaded, retrying with backoff", append(fields, zap.Error(err))...)
	case err != nil && failures >= 4 && failures%2 == 0: // about once a minute once backed off
		stale := "never loaded"
		if !since.IsZero() {
			stale = time.Since(since).Round(time.Second).String()
		}
		logger.Error("store still unreadable", append(fields, zap.Int("failed_polls", failures+1), zap.String("stale_for", stale), zap.Error(err))...)
	}
}

// poll brings the accounts up to the store's head: nothing but one read
// of head when nothing changed, the log entries and changed accounts
// otherwise, every account when this server is too far behind (or has
// never read the store).
func (s *accountStore) poll(ctx context.Context) error {
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
				logger.Warn("store base not used: reading every account", zap.String("store", s.name), zap.Error(err))
			}
			return s.loadAll(ctx, st, logger, head, gen0)
		}
		// Records the base lacks are read at once, with the log after it.
		v := s.view.Load()
		var missing []string
		s.mu.Lock()
		for id := range listed {
			if _, ok := v.get(id); !ok && s.refused[id] == "" {
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
func (s *accountStore) recordIDs(st certmagic.Storage, keys []string) (ids map[string]bool, ignored []string) {
	fileStorage, _ := st.(*certmagic.FileStorage)
	ids = make(map[string]bool, len(keys))
	for _, k := range keys {
		seg := k[strings.LastIndexByte(k, '/')+1:]
		if isTempName(fileStorage, k) {
			continue
		}
		id, err := unescapeID(seg)
		if err != nil || escapeID(id) != seg {
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
func (s *accountStore) noteBaseCheck(logger *zap.Logger, baseSeq uint64, dropped, missing, ignored []string, named map[string]bool) {
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
		logger.Error("store base disagrees with the records: serving the records", zap.String("store", s.name), zap.String("problem", msg))
	}
	if len(ignored) > 0 {
		logger.Error("store keys that are no record of this store ignored", zap.String("store", s.name), zap.Strings("keys", ignored[:min(len(ignored), 20)]))
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
		out = append(out, q(id))
	}
	more := ""
	if len(ids) > 5 {
		more = ", ..."
	}
	return " (" + strings.Join(out, ", ") + more + ")"
}

// readChanges reads the changes after seq last up to head: the log
// entries, then the accounts they name.
func (s *accountStore) readChanges(ctx context.Context, st certmagic.Storage, logger *zap.Logger, head storeHead, last, gen0 uint64, named map[string]bool) error {
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
		var e logEntry
		if err := json.Unmarshal(b, &e); err != nil {
			logger.Error("store log entry unreadable: reading every account", zap.String("store", s.name), zap.Uint64("seq", seq), zap.Error(err))
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

// loadAll reads every account of the store.
func (s *accountStore) loadAll(ctx context.Context, st certmagic.Storage, logger *zap.Logger, head storeHead, gen0 uint64) error {
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
		id, err := unescapeID(seg)
		if err != nil || escapeID(id) != seg {
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
	logger.Info("store loaded", zap.String("store", s.name), zap.Int("accounts", len(accounts)), zap.Uint64("seq", head.Seq))
	return nil
}

// install makes accounts, as the store held them at head, the accounts
// served, keeping what this server wrote since gen0.
func (s *accountStore) install(logger *zap.Logger, accounts map[string]policy.Account, refused map[string]string, head storeHead, gen0 uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.view.Load()
	for id, g := range s.local {
		if g > gen0 { // written here since the load began
			if a, ok := cur.get(id); ok {
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
func (s *accountStore) recheckRefused(refused map[string]string) {
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
func (s *accountStore) unreadableIDs() []string {
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
func (s *accountStore) isolateUnreadable(failed map[string]error, total int, changes map[string]*policy.Account, refused map[string]string) error {
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
			first = fmt.Errorf("reading account %s: %v", q(id), err)
		}
	}
	if first != nil {
		return first
	}
	for id, err := range failed {
		if changes != nil {
			changes[id] = nil
		}
		refused[id] = "record unreadable, read again at every poll: " + short(err.Error())
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
	var rec record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return nil, "unreadable record: " + short(err.Error())
	}
	if rec.Account != id {
		return nil, fmt.Sprintf("record names account %s", q(rec.Account))
	}
	a, err := compileWith(id, rec.Rules, cache)
	if err != nil {
		return nil, err.Error()
	}
	return a, ""
}

// compile checks and compiles one account as a config's account is,
// sharing the store's method sets.
func (s *accountStore) compile(id string, rules []policy.Rule) (*policy.Account, error) {
	if n := len(escapeID(id)); n > maxKeySegment && policy.CheckAccountID(id) == nil {
		var p policy.Problems
		p.Add(policy.Place{Field: "accounts", Account: id, Rule: -1}, fmt.Errorf(
			"account %s: account ID too long for a store: %d bytes as a storage key, at most %d (letters, digits, -, _ and . take one byte, other bytes three)",
			q(id), n, maxKeySegment))
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
	if line, _ := json.Marshal(record{Account: id, Rules: rulesOf(*a)}); len(line)+1 > maxRulesBody {
		var p policy.Problems
		p.Add(policy.Place{Field: "accounts", Account: id, Rule: -1}, fmt.Errorf(
			"account %s: its rules, as export writes them (methods included), take %d bytes, over the %d of one import line or PUT body",
			q(id), len(line)+1, maxRulesBody))
		return nil, p.Err()
	}
	return a, nil
}

// maxKeySegment bounds an account's storage key segment (escapeID), within
// the 255 bytes a file name can have.
const maxKeySegment = 200

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
func (s *accountStore) noteRefused(logger *zap.Logger, refused map[string]string) {
	for id, why := range refused {
		if s.refused[id] != why {
			logger.Error("store record refused: the account allows no origin until it is written again",
				zap.String("store", s.name), zap.String("account", id), zap.String("problem", why))
		}
		if len(s.refused) < 1000 {
			s.refused[id] = why
		}
	}
}

// forgetLocal drops the marks of local writes that a poll begun after
// them has read; s.mu is held.
func (s *accountStore) forgetLocal(gen0 uint64) {
	for id, g := range s.local {
		if g <= gen0 {
			delete(s.local, id)
		}
	}
}

func readHead(ctx context.Context, st certmagic.Storage, keys storageKeys) (storeHead, error) {
	var h storeHead
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

// change is one account to write: rules, or a deletion.
type change struct {
	id     string
	rules  []policy.Rule
	acct   *policy.Account // compiled rules; nil deletes
	delete bool
	// check, when set, is called under the store's lock with the
	// account as stored (nil without a valid record) before anything
	// is written; its error refuses the whole commit (an If-Match
	// precondition, storeedit.go).
	check func(stored *policy.Account) error
	// by, when set, records the change in the account's history, as
	// made by this user (storeedit.go).
	by string
}

var errStoreBusy = errors.New("the store's lock was not obtained in time")

func errHeadMissing(k storageKeys) error {
	return fmt.Errorf("the store's head %s is missing (storage emptied or not mounted?): serving the last rules read, writing nothing", k.head())
}

// lastOfEach returns changes with one change per account, the last
// given, in the order of their first mention: the accounts of a commit
// are written side by side, so two writes of one key would race.
func lastOfEach(changes []change) []change {
	at := make(map[string]int, len(changes))
	out := make([]change, 0, len(changes))
	for _, c := range changes {
		if i, ok := at[c.id]; ok {
			out[i] = c
			continue
		}
		at[c.id] = len(out)
		out = append(out, c)
	}
	return out
}

// commitError is a commit the storage failed part way through: written
// of its accounts were written, and published (served by every server
// from its next poll) unless the storage failed before that too; the
// others are unchanged.
type commitError struct {
	written   int
	published bool
	err       error
}

func (e *commitError) Error() string {
	if !e.published {
		return fmt.Sprintf("%d accounts written but not yet served (they are once the next write to the store succeeds): %v", e.written, e.err)
	}
	return fmt.Sprintf("%d accounts written and served, the others unchanged: %v", e.written, e.err)
}

func (e *commitError) Unwrap() error { return e.err }

// commit persists a batch of changes under the storage lock, then
// applies it to this server's accounts. existed reports, for each
// change, whether the account was in the store before.
func (s *accountStore) commit(ctx context.Context, changes []change) (existed []bool, err error) {
	start := time.Now()
	defer func() {
		if err == nil {
			storeEdited(s.name, time.Since(start))
			storeLoaded(s.name, s.view.Load().count)
		}
	}()
	changes = lastOfEach(changes)
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	st, _ := s.storage()
	lockName := "atomsphere_cors_" + s.name
	if err := lockStore(ctx, st, lockName); err != nil {
		return nil, err
	}
	defer func() { _ = st.Unlock(context.Background(), lockName) }()

	head, err := readHead(ctx, st, s.keys)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	known := s.epoch
	s.mu.Unlock()
	if head.Epoch == "" && known != "" {
		// The store this server read has no head: its storage is
		// emptied or not mounted. Writing would start a store no other
		// server reads (docs/store.md, "Faults").
		return nil, errHeadMissing(s.keys)
	}
	prior := head
	if head.Epoch == "" {
		head.Epoch = newEpoch()
	}
	// Adopt the log entries of writers killed before they wrote head:
	// the accounts they name are read again by every server.
	for range 3 {
		if !st.Exists(ctx, s.keys.log(head.Seq+1)) {
			break
		}
		head.Seq++
	}
	if err := s.checkChanges(ctx, st, changes); err != nil {
		return nil, err
	}
	seq := head.Seq + 1
	ids := make([]string, len(changes))
	existed = make([]bool, len(changes))
	for i, c := range changes {
		ids[i] = c.id
	}
	_ = inParallel(ctx, len(changes), func(i int) error {
		existed[i] = st.Exists(ctx, s.keys.account(changes[i].id))
		return nil
	})
	noop := true
	for i, c := range changes {
		noop = noop && c.delete && !existed[i]
	}
	if noop { // deletes of accounts that are not there: nothing to write
		return existed, nil
	}
	entry, _ := json.Marshal(logEntry{Accounts: ids})
	if err := st.Store(ctx, s.keys.log(seq), entry); err != nil {
		return nil, err
	}
	written := make([]bool, len(changes))
	werr := inParallel(ctx, len(changes), func(i int) error {
		c := changes[i]
		if c.delete {
			if existed[i] {
				if err := st.Delete(ctx, s.keys.account(c.id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return err
				}
			}
		} else {
			b, _ := json.Marshal(record{Account: c.id, Rules: c.rules})
			if err := st.Store(ctx, s.keys.account(c.id), b); err != nil {
				return err
			}
		}
		written[i] = true
		return nil
	})
	n := 0
	for _, w := range written {
		if w {
			n++
		}
	}
	if werr != nil && n == 0 {
		// Nothing written: take the log entry back (left behind, it
		// would only make servers read unchanged accounts again).
		_ = st.Delete(ctx, s.keys.log(seq))
		return nil, werr
	}
	// Publish what was written, all of it or part: every server reads
	// the accounts the entry names again, and so serves what the
	// storage holds.
	head.Seq = seq
	hb, _ := json.Marshal(head)
	if err := st.Store(ctx, s.keys.head(), hb); err != nil {
		return nil, &commitError{written: n, published: false, err: err}
	}
	if seq > logRetain {
		_ = st.Delete(ctx, s.keys.log(seq-logRetain))
	}
	if werr != nil {
		kept := changes[:0:0]
		for i, c := range changes {
			if written[i] {
				kept = append(kept, c)
			}
		}
		changes = kept
		defer func() { err = &commitError{written: n, published: true, err: werr} }()
	}

	s.recordHistory(ctx, st, changes)

	// Persisted: this server serves it from its next request on.
	s.mu.Lock()
	if s.source == "store" && s.seq == prior.Seq && s.epoch == prior.Epoch && seq == prior.Seq+1 {
		// This server had read every change before this one (and no
		// cut-off one was adopted): it is now at this one, with no
		// log entry to read back.
		s.seq, s.epoch = head.Seq, head.Epoch
	}
	s.gen++
	batch := make(map[string]*policy.Account, len(changes))
	for _, c := range changes {
		s.local[c.id] = s.gen
		delete(s.refused, c.id)
		batch[c.id] = c.acct
	}
	s.view.Store(s.view.Load().with(batch))
	s.dirty = true
	s.mu.Unlock()
	return existed, nil
}

// compileEach runs fn on every value from in, on workers goroutines
// each with its own method cache (so that they compile side by side),
// and returns the channel of what fn emits, closed once in is closed
// and every call has returned.
func compileEach[I, O any](workers int, in <-chan I, fn func(cache *policy.MethodCache, v I, emit func(O))) <-chan O {
	out := make(chan O, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cache := policy.NewMethodCache()
			emit := func(o O) { out <- o }
			for v := range in {
				fn(cache, v, emit)
			}
		}()
	}
	go func() { wg.Wait(); close(out) }()
	return out
}

// storageWorkers bounds the storage operations a commit or a load runs
// at once: each costs a round trip to a network storage, or a write and
// an fsync to file_system, which disks and servers do side by side.
const storageWorkers = 16

// inParallel runs fn(0) to fn(n-1) on up to storageWorkers goroutines
// (the caller's alone for one) and returns the first error; after an
// error, or once ctx is done, the calls not yet started are skipped.
func inParallel(ctx context.Context, n int, fn func(i int) error) error {
	if n == 1 {
		return fn(0)
	}
	var (
		next     atomic.Int64
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	failed := func() bool { mu.Lock(); defer mu.Unlock(); return firstErr != nil }
	for range min(n, storageWorkers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || failed() {
					return
				}
				err := ctx.Err()
				if err == nil {
					err = fn(i)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func newEpoch() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// storeStatus is the admin API's view of a store on this server.
type storeStatus struct {
	Name                string            `json:"name"`
	Serving             string            `json:"serving"` // none, snapshot, store
	Accounts            int               `json:"accounts"`
	Seq                 uint64            `json:"seq"`
	Epoch               string            `json:"epoch"`
	PollInterval        string            `json:"poll_interval"`
	LastRead            string            `json:"last_read,omitempty"`
	Stale               bool              `json:"stale"`
	StaleSeconds        float64           `json:"stale_seconds"`
	ConsecutiveFailures int               `json:"consecutive_failures"`
	LastError           string            `json:"last_error,omitempty"`
	Refused             map[string]string `json:"refused,omitempty"`
	// BaseMismatch says how the base this server started from differed
	// from the records (checked when a server reads the base).
	BaseMismatch string `json:"base_mismatch,omitempty"`
	// IgnoredKeys are keys under accounts/ that are not the canonical
	// key of an account ID (written by hand?): not served.
	IgnoredKeys []string `json:"ignored_keys,omitempty"`
}

func (s *accountStore) status() storeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := storeStatus{
		Name: s.name, Serving: s.source, Accounts: s.view.Load().count, Seq: s.seq, Epoch: s.epoch,
		PollInterval: s.interval.String(), ConsecutiveFailures: s.failures, LastError: s.lastErr,
		Stale:        s.failures > 0 || s.source != "store",
		BaseMismatch: s.baseMismatch, IgnoredKeys: s.ignoredKeys,
	}
	if !s.loadedAt.IsZero() {
		st.LastRead = s.loadedAt.UTC().Format(time.RFC3339Nano)
	}
	if st.Stale {
		// Since the last read of the storage; a store never read (none
		// or a snapshot served) has been stale since it was opened.
		since := s.loadedAt
		if since.IsZero() {
			since = s.openedAt
		}
		st.StaleSeconds = time.Since(since).Seconds()
	}
	if len(s.refused) > 0 {
		st.Refused = make(map[string]string, min(len(s.refused), 20))
		for id, why := range s.refused {
			if len(st.Refused) == 20 {
				break
			}
			st.Refused[id] = why
		}
	}
	return st
}

// registry: the stores the admin API routes reach, by name; the newest
// of a name first (a reload that changes a store's storage runs both
// for a moment).
var registry struct {
	sync.Mutex
	byName map[string][]*accountStore
}

func registerStore(s *accountStore) {
	registry.Lock()
	defer registry.Unlock()
	if registry.byName == nil {
		registry.byName = map[string][]*accountStore{}
	}
	list := registry.byName[s.name]
	for i, o := range list {
		if o == s {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	registry.byName[s.name] = append(list, s)
}

// unregisterStore removes s from the registry and reports whether it was
// the last store of its name.
func unregisterStore(s *accountStore) bool {
	registry.Lock()
	defer registry.Unlock()
	list := registry.byName[s.name]
	for i, o := range list {
		if o == s {
			registry.byName[s.name] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(registry.byName[s.name]) == 0 {
		delete(registry.byName, s.name)
		return true
	}
	return false
}

func lookupStore(name string) *accountStore {
	registry.Lock()
	defer registry.Unlock()
	list := registry.byName[name]
	if len(list) == 0 {
		return nil
	}
	return list[len(list)-1]
}
