package rulestore

// Writing the rules store: a commit of changes under the storage lock
// (log entry, then accounts, then head; see the layout in store.go).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"

	"atomspherecors/internal/policy"
)

// Change is one account to write: rules, or a deletion.
type Change struct {
	ID     string
	Rules  []policy.Rule
	Acct   *policy.Account // compiled rules; nil deletes
	Delete bool
	// Check, when set, is called under the store's lock with the
	// account as stored (nil without a valid record) before anything
	// is written; its error refuses the whole commit (an If-Match
	// precondition, edit.go).
	Check func(stored *policy.Account) error
	// By, when set, records the change in the account's history, as
	// made by this user (edit.go).
	By string
	// HistoryGap, when set, is told why the change's history entry was
	// not kept as it should be (HistoryNotRecorded, HistoryRestarted).
	HistoryGap func(why string)

	before []policy.Rule // the rules as stored, read by Check
}

var errStoreBusy = errors.New("the store's lock was not obtained in time")

func errHeadMissing(k storageKeys) error {
	return fmt.Errorf("the store's head %s is missing (storage emptied or not mounted?): serving the last rules read, writing nothing", k.head())
}

// lastOfEach returns changes with one change per account, the last
// given, in the order of their first mention: the accounts of a commit
// are written side by side, so two writes of one key would race.
func lastOfEach(changes []Change) []Change {
	at := make(map[string]int, len(changes))
	out := make([]Change, 0, len(changes))
	for _, c := range changes {
		if i, ok := at[c.ID]; ok {
			out[i] = c
			continue
		}
		at[c.ID] = len(out)
		out = append(out, c)
	}
	return out
}

// CommitError is a commit the storage failed part way through: written
// of its accounts were written, and published (served by every server
// from its next poll) unless the storage failed before that too; the
// others are unchanged.
type CommitError struct {
	written   int
	published bool
	err       error
}

func (e *CommitError) Error() string {
	if !e.published {
		return fmt.Sprintf("%d accounts written but not yet served (they are once the next write to the store succeeds): %v", e.written, e.err)
	}
	return fmt.Sprintf("%d accounts written and served, the others unchanged: %v", e.written, e.err)
}

func (e *CommitError) Unwrap() error { return e.err }

// Commit persists a batch of changes under the storage lock, then
// applies it to this server's accounts. existed reports, for each
// change, whether the account was in the store before.
func (s *Store) Commit(ctx context.Context, changes []Change) (existed []bool, err error) {
	start := time.Now()
	defer func() {
		if err == nil {
			storeEdited(s.Name, time.Since(start))
			storeLoaded(s.Name, s.view.Load().count)
		}
	}()
	changes = lastOfEach(changes)
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	st, _ := s.storage()
	lockName := "atomsphere_cors_" + s.Name
	if err := lockStore(ctx, st, lockName); err != nil {
		return nil, err
	}
	defer func() { _ = st.Unlock(context.Background(), lockName) }()

	head, prior, err := s.nextHead(ctx, st)
	if err != nil {
		return nil, err
	}
	if err := s.checkChanges(ctx, st, changes); err != nil {
		return nil, err
	}
	seq := head.Seq + 1
	existed = make([]bool, len(changes))
	_ = inParallel(ctx, len(changes), func(i int) error {
		existed[i] = st.Exists(ctx, s.keys.account(changes[i].ID))
		return nil
	})
	noop := true
	for i, c := range changes {
		noop = noop && c.Delete && !existed[i]
	}
	if noop { // deletes of accounts that are not there: nothing to write
		return existed, nil
	}
	ids := make([]string, len(changes))
	for i, c := range changes {
		ids[i] = c.ID
	}
	entry, _ := json.Marshal(LogEntry{Accounts: ids})
	if err := st.Store(ctx, s.keys.log(seq), entry); err != nil {
		return nil, err
	}
	written, n, werr := s.writeAccounts(ctx, st, changes, existed)
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
		return nil, &CommitError{written: n, published: false, err: err}
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
		defer func() { err = &CommitError{written: n, published: true, err: werr} }()
	}
	s.recordHistory(ctx, st, changes)
	s.applyCommitted(changes, prior, head)
	return existed, nil
}

// nextHead reads the store's head for a commit (the storage lock held):
// the head to write after (with a new epoch for a new store, and the log
// entries of writers killed before they wrote head adopted), and prior,
// the head as read.
func (s *Store) nextHead(ctx context.Context, st certmagic.Storage) (head, prior Head, err error) {
	head, err = readHead(ctx, st, s.keys)
	if err != nil {
		return head, head, err
	}
	s.mu.Lock()
	known := s.epoch
	s.mu.Unlock()
	if head.Epoch == "" && known != "" {
		// The store this server read has no head: its storage is
		// emptied or not mounted. Writing would start a store no other
		// server reads (docs/store.md, "Faults").
		return head, head, errHeadMissing(s.keys)
	}
	prior = head
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
	return head, prior, nil
}

// writeAccounts writes (or deletes) the changes' records in parallel;
// written says which succeeded, n how many, err the first failure.
func (s *Store) writeAccounts(ctx context.Context, st certmagic.Storage, changes []Change, existed []bool) (written []bool, n int, err error) {
	written = make([]bool, len(changes))
	err = inParallel(ctx, len(changes), func(i int) error {
		c := changes[i]
		if c.Delete {
			if existed[i] {
				if err := st.Delete(ctx, s.keys.account(c.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return err
				}
			}
		} else {
			b, _ := json.Marshal(Record{Account: c.ID, Rules: c.Rules})
			if err := st.Store(ctx, s.keys.account(c.ID), b); err != nil {
				return err
			}
		}
		written[i] = true
		return nil
	})
	for _, w := range written {
		if w {
			n++
		}
	}
	return written, n, err
}

// applyCommitted serves committed changes on this server from its next
// request on; prior is the head the commit read, head the one it wrote.
func (s *Store) applyCommitted(changes []Change, prior, head Head) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.source == "store" && s.seq == prior.Seq && s.epoch == prior.Epoch && head.Seq == prior.Seq+1 {
		// This server had read every change before this one (and no
		// cut-off one was adopted): it is now at this one, with no
		// log entry to read back.
		s.seq, s.epoch = head.Seq, head.Epoch
	}
	s.gen++
	batch := make(map[string]*policy.Account, len(changes))
	for _, c := range changes {
		s.local[c.ID] = s.gen
		delete(s.refused, c.ID)
		batch[c.ID] = c.Acct
	}
	s.view.Store(s.view.Load().with(batch))
	s.dirty = true
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
