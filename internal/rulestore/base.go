package rulestore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// The store's base: every account as of one seq, in one key, in the
// snapshot's line format. A server that starts without a snapshot (a new
// server of a fleet) reads it and the log after it instead of 10^5
// account records one by one (docs/store.md, "How the store works").
//
// Any server may write it, from the accounts it serves just after a poll
// or a commit brought it to seq N: those are the store's accounts at N,
// except accounts changed after N, which a reader of the base reads
// again from the log. The base is a cache: when it is missing, of
// another epoch, unreadable, or older than the log kept, a server reads
// every account instead.

const (
	// BaseEvery is how many changes after the base a server writes a new one.
	BaseEvery = 100
	// baseMinInterval bounds how often one server writes the base.
	baseMinInterval = time.Minute
	// baseWriteTimeout bounds one write of the base (about 0.3 s for
	// 10^5 accounts on a local disk).
	baseWriteTimeout = time.Minute
)

// MaybeWriteBase starts writing the base when this server's accounts
// are baseEvery changes past the base it last saw, at most once every
// baseMinInterval; with now (after an import of at least baseEvery
// accounts), at once, unless the last import's base is less than
// baseMinInterval old. It runs in the poller after each successful poll,
// and with now after such an import.
func (s *Store) MaybeWriteBase(now bool) {
	s.mu.Lock()
	// An import asks for the base at once, but imports in a row do not
	// each rewrite every account (about 140 MB at 10^6): within
	// baseMinInterval of the last import's base, the poller writes it
	// once the interval has passed, as the changes are past baseNext.
	due := s.source == "store" && !s.baseBusy && (now && time.Since(s.importBaseAt) >= baseMinInterval ||
		s.seq >= s.baseNext && time.Since(s.baseAt) >= baseMinInterval)
	if due {
		s.baseBusy, s.baseAt = true, time.Now()
		if now {
			s.importBaseAt = s.baseAt
		}
	}
	s.mu.Unlock()
	if !due {
		return
	}
	// Not bound to s.ctx: a store that stops (Destruct) waits for the
	// base being written, so that an import's base is not lost to a stop
	// right after it.
	s.baseWG.Add(1)
	go func() {
		defer s.baseWG.Done()
		defer func() {
			s.mu.Lock()
			s.baseBusy = false
			s.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), baseWriteTimeout)
		defer cancel()
		if err := s.writeBase(ctx, now); err != nil {
			s.logger().Warn("writing the store's base", zap.String("store", s.Name), zap.Error(err))
		}
	}()
}

// writeBase writes the base under a lock of its own, unless another
// server wrote a recent enough one meanwhile (with now: one as recent).
func (s *Store) writeBase(ctx context.Context, now bool) error {
	st, logger := s.storage()
	lockName := "atomsphere_cors_" + s.Name + "_base"
	if err := lockStore(ctx, st, lockName); err != nil {
		return err
	}
	defer func() { _ = st.Unlock(context.Background(), lockName) }()
	var cur Head
	if b, err := st.Load(ctx, s.keys.baseSeq()); err == nil {
		_ = json.Unmarshal(b, &cur)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	s.mu.Lock()
	v := s.view.Load()
	hdr := s.linesHeader(v)
	s.mu.Unlock()
	if cur.Epoch == hdr.Epoch && (cur.Seq >= hdr.Seq || !now && cur.Seq+BaseEvery > hdr.Seq) {
		s.mu.Lock()
		s.baseNext = cur.Seq + BaseEvery
		s.mu.Unlock()
		return nil
	}
	var buf bytes.Buffer
	w := bufio.NewWriterSize(&buf, 1<<16)
	writeAccountLines(w, hdr, v)
	_ = w.Flush()
	if err := st.Store(ctx, s.keys.base(), buf.Bytes()); err != nil {
		return err
	}
	b, _ := json.Marshal(Head{Seq: hdr.Seq, Epoch: hdr.Epoch})
	if err := st.Store(ctx, s.keys.baseSeq(), b); err != nil {
		return err
	}
	s.mu.Lock()
	s.baseNext = hdr.Seq + BaseEvery
	s.mu.Unlock()
	logger.Info("store base written", zap.String("store", s.Name), zap.Int("accounts", hdr.Accounts),
		zap.Uint64("seq", hdr.Seq), zap.Int("bytes", buf.Len()))
	return nil
}

// loadBase serves the accounts of the base, when it is of head's epoch
// and the log after it is kept, and returns its seq; the caller reads
// the changes after it. fs.ErrNotExist: there is no base.
//
// listed, when not nil, are the accounts that have a record: an account of
// the base without one is not served (dropped lists them), as the records
// and not the base are the store.
func (s *Store) loadBase(ctx context.Context, st certmagic.Storage, logger *zap.Logger, head Head, gen0 uint64, listed map[string]bool) (uint64, []string, error) {
	b, err := st.Load(ctx, s.keys.base())
	if err != nil {
		return 0, nil, err
	}
	hdr, accounts, err := readAccountLines(bufio.NewReader(bytes.NewReader(b)), s.Name)
	switch {
	case err != nil:
		return 0, nil, fmt.Errorf("%s: %v", s.keys.base(), err)
	case hdr.Epoch != head.Epoch:
		return 0, nil, fmt.Errorf("%s: of another epoch (the store was recreated)", s.keys.base())
	case hdr.Seq > head.Seq || head.Seq-hdr.Seq > logRetain/2:
		return 0, nil, fmt.Errorf("%s: at change %d, the store at %d", s.keys.base(), hdr.Seq, head.Seq)
	}
	var dropped []string
	if listed != nil {
		for id := range accounts {
			if !listed[id] {
				dropped = append(dropped, id)
				delete(accounts, id)
			}
		}
	}
	refused := hdr.Refused
	if refused == nil {
		refused = map[string]string{}
	}
	s.install(logger, accounts, refused, Head{Seq: hdr.Seq, Epoch: hdr.Epoch}, gen0)
	s.mu.Lock()
	s.baseNext = hdr.Seq + BaseEvery
	s.recheckRefused(hdr.Refused)
	s.mu.Unlock()
	logger.Info("store loaded from its base", zap.String("store", s.Name), zap.Int("accounts", len(accounts)),
		zap.Uint64("base_seq", hdr.Seq), zap.Uint64("seq", head.Seq))
	return hdr.Seq, dropped, nil
}
