package rulestore

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"atomspherecors/internal/policy"
)

// The store's layout in the storage, under atomsphere_cors/<name>/:
//
//	head            {"seq": N, "epoch": "..."}: the last committed change
//	log/<seq>       {"accounts": [...]}: the accounts change seq touched
//	accounts/<id>   {"account": "<id>", "rules": [...]}: one account
//	base            every account as of one seq (base.go)
//	base-seq        {"seq": N, "epoch": "..."}: the seq of base
//	history/<id>    an account's last changes by a user (edit.go)
//
// A poll reads head alone when nothing changed; otherwise the log
// entries since the last seen seq, and the accounts they name. A server
// that starts, or is too far behind, reads base and the log after it,
// or else every account. A writer
// holds the storage lock atomsphere_cors_<name> and writes the log
// entry, then the accounts, then head, so a writer killed half way
// leaves a log entry past head that the next writer adopts.
type Head struct {
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch"`
}

type LogEntry struct {
	Accounts []string `json:"accounts"`
}

// Record is one account as stored, and one line of import and export.
type Record struct {
	Account string        `json:"account"`
	Rules   []policy.Rule `json:"rules"`
}

// MaxRulesBody bounds one account's rules as written: a PUT body, and
// one line of an import or export.
const MaxRulesBody = 1 << 20

// DefaultMaxImportSize is an import's largest body unless the store's
// max_import_size says otherwise: 256 MiB, about 10^6 accounts of 3 rules.
const DefaultMaxImportSize = 256 << 20

// logRetain is the number of log entries kept: a server further behind
// than that reads every account again.
const logRetain = 10000

// storageKeys names one store's keys.
type storageKeys string

func (k storageKeys) head() string        { return string(k) + "head" }
func (k storageKeys) accountsDir() string { return string(k) + "accounts" }
func (k storageKeys) account(id string) string {
	return string(k) + "accounts/" + EscapeID(id)
}
func (k storageKeys) log(seq uint64) string { return string(k) + "log/" + fmt.Sprintf("%020d", seq) }
func (k storageKeys) history(id string) string {
	return string(k) + "history/" + EscapeID(id)
}

// historyAside keeps the last history of an account that could not be
// decoded, for an operator to read; the account's history starts again.
func (k storageKeys) historyAside(id string) string {
	return string(k) + "history-unreadable/" + EscapeID(id)
}
func (k storageKeys) base() string    { return string(k) + "base" }
func (k storageKeys) baseSeq() string { return string(k) + "base-seq" }

// EscapeID makes an account ID one safe storage key segment: bytes
// other than letters, digits, "-", "_" and "." are percent-encoded, as
// is a leading ".".
func EscapeID(id string) string {
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

func UnescapeID(seg string) (string, error) { return url.PathUnescape(seg) }

// Store is the live state of one store on this server, shared by
// every handler that uses it.
type Store struct {
	Name    string
	DataDir string // holds the snapshot and the import spool (Caddy's data directory)
	Key     string // the pool key
	keys    storageKeys

	view atomic.Pointer[accountsView]

	MaxImport atomic.Int64 // an import's largest body, as the newest handler sets it

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
	pollMu  sync.Mutex // held by a poll, so that ReadAccount serves nothing older than it read
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
func newAccountStore(name, key, dataDir string, st certmagic.Storage, logger *zap.Logger, interval time.Duration) *Store {
	s := &Store{
		Name: name, Key: key, DataDir: dataDir, keys: storageKeys("atomsphere_cors/" + name + "/"),
		interval: interval, source: "none",
		local: map[string]uint64{}, refused: map[string]string{}, unreadable: map[string]int{},
		cache:    policy.NewMethodCache(),
		done:     make(chan struct{}),
		users:    []storeUser{{st: st, logger: logger}},
		openedAt: time.Now(),
	}
	s.view.Store(newView(nil))
	s.MaxImport.Store(DefaultMaxImportSize)
	return s
}

// Open starts a store: from the local snapshot if there is one,
// then one read of the store (bounded in time), then the poller.
func Open(name, key, dataDir string, st certmagic.Storage, logger *zap.Logger, interval time.Duration) *Store {
	s := newAccountStore(name, key, dataDir, st, logger, interval)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	cleanSpool.Do(func() { removeStaleSpools(dataDir, logger) })
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

func (s *Store) AddUser(owner any, st certmagic.Storage, logger *zap.Logger, interval time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.users) == 1 && s.users[0].owner == nil {
		s.users = s.users[:0] // the opener's placeholder
	}
	s.users = append(s.users, storeUser{owner: owner, st: st, logger: logger})
	s.interval = interval
	registerStore(s)
}

func (s *Store) RemoveUser(owner any) {
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
func (s *Store) storage() (certmagic.Storage, *zap.Logger) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[len(s.users)-1]
	return u.st, u.logger
}

func (s *Store) logger() *zap.Logger { _, l := s.storage(); return l }

// Loaded reports whether the store serves accounts read from the
// storage or a snapshot, rather than none yet.
func (s *Store) Loaded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.source != "none"
}

// ReasonNotLoaded is explain's reason for a denial by a handler whose
// store has never been loaded on this server (docs/store.md, "Faults").
const ReasonNotLoaded = "store not loaded: no account is served until the store's first read (account has no rules)"

// Account is the per-request lookup (policy.Source): lock-free.
func (s *Store) Account(id string) policy.Account {
	a, _ := s.view.Load().Get(id)
	return a
}

// Destruct stops the poller and writes the snapshot.
func (s *Store) Destruct() error {
	s.cancel()
	<-s.done
	if unregisterStore(s) {
		storeMetricsClose(s.Name)
	}
	s.snapMu.Lock() // a snapshot being written in the background ends first
	s.snapMu.Unlock()
	s.baseWG.Wait() // and a base
	s.mu.Lock()
	dirty := s.dirty && s.source == "store"
	s.mu.Unlock()
	if dirty {
		if err := s.writeSnapshot(); err != nil {
			s.logger().Error("writing the local snapshot of the store", zap.String("store", s.Name), zap.Error(err))
		}
	}
	return nil
}

// run polls until the store is destructed, backing off while the
// storage fails, and writes the snapshot now and then.
func (s *Store) run() {
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
		storePolled(s.Name, time.Since(start))
		storeSynced(s.Name, time.Now(), err)
		if err == nil {
			storeLoaded(s.Name, s.view.Load().count)
			s.MaybeWriteBase(false)
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
func (s *Store) maybeWriteSnapshot() {
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
			s.logger().Error("writing the local snapshot of the store", zap.String("store", s.Name), zap.Error(err))
		}
		s.mu.Lock()
		s.snapBusy = false
		s.mu.Unlock()
	}()
}

// maxBackoff bounds the wait between polls of a failing storage.
const maxBackoff = 30 * time.Second

func (s *Store) pollDelay() time.Duration {
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
func (s *Store) afterPoll(err error) {
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
	fields := []zap.Field{zap.String("store", s.Name), zap.String("serving", source), zap.Uint64("seq", seq)}
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

// Status is the admin API's view of a store on this server.
type Status struct {
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

func (s *Store) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{
		Name: s.Name, Serving: s.source, Accounts: s.view.Load().count, Seq: s.seq, Epoch: s.epoch,
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
	byName map[string][]*Store
}

func registerStore(s *Store) {
	registry.Lock()
	defer registry.Unlock()
	if registry.byName == nil {
		registry.byName = map[string][]*Store{}
	}
	list := registry.byName[s.Name]
	for i, o := range list {
		if o == s {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	registry.byName[s.Name] = append(list, s)
}

// unregisterStore removes s from the registry and reports whether it was
// the last store of its name.
func unregisterStore(s *Store) bool {
	registry.Lock()
	defer registry.Unlock()
	list := registry.byName[s.Name]
	for i, o := range list {
		if o == s {
			registry.byName[s.Name] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(registry.byName[s.Name]) == 0 {
		delete(registry.byName, s.Name)
		return true
	}
	return false
}

func Lookup(name string) *Store {
	registry.Lock()
	defer registry.Unlock()
	list := registry.byName[name]
	if len(list) == 0 {
		return nil
	}
	return list[len(list)-1]
}

// Registered is how many stores of name this process has open.
func Registered(name string) int {
	registry.Lock()
	defer registry.Unlock()
	return len(registry.byName[name])
}

// Accounts is the state this server serves now: one consistent view of
// every account, for lists and exports.
func (s *Store) Accounts() *accountsView { return s.view.Load() }

// State says what the store serves ("none", "snapshot" or "store") and
// the error of its last failed read ("" when none).
func (s *Store) State() (source, lastErr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.source, s.lastErr
}

// ReadOnce is a store read from st once, read-only, for the explain
// command: no poller, no snapshot, nothing written, not registered for
// the admin routes. A storage that cannot be read is an error; an empty
// store has no accounts.
func ReadOnce(ctx context.Context, name, dataDir string, st certmagic.Storage) (*Store, error) {
	s := newAccountStore(name, "", dataDir, st, zap.NewNop(), 0)
	rctx, cancel := context.WithTimeout(ctx, fullReadTimeout)
	defer cancel()
	if err := s.poll(rctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.source = "store"
	s.mu.Unlock()
	return s, nil
}
