// Package redisstorage is a small certmagic.Storage over Redis
// (go-redis), registered as the Caddy module
// caddy.storage.atomsphere_test_redis. It exists to test the rules store
// over a networked storage shared by a fleet (docs/store.md); it is not
// meant for production use.
//
// Each storage key K is a Redis hash "atomsphere_test:K" with the fields
// "value" and "modified" (Unix nanoseconds). Locks are plain keys
// "atomsphere_test_lock:<name>" taken with SET NX PX and a random token,
// refreshed while held and released only by their holder.
package redisstorage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
)

func init() { caddy.RegisterModule(Module{}) }

const (
	keyPrefix  = "atomsphere_test:"
	lockPrefix = "atomsphere_test_lock:"
	// lockTTL is how long a lock outlives a holder that stopped
	// refreshing it (a killed server); refreshes run every lockTTL/3.
	lockTTL   = 10 * time.Second
	lockRetry = 50 * time.Millisecond
)

// Module is the Caddy storage module.
type Module struct {
	// Address of the Redis server, host:port.
	Address string `json:"address,omitempty"`
}

func (Module) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.storage.atomsphere_test_redis", New: func() caddy.Module { return new(Module) }}
}

// CertMagicStorage returns a Storage on Address.
func (m *Module) CertMagicStorage() (certmagic.Storage, error) {
	if m.Address == "" {
		return nil, errors.New("atomsphere_test_redis: address is required")
	}
	return New(m.Address), nil
}

// Storage is a certmagic.Storage over one Redis server.
type Storage struct {
	rdb   *redis.Client
	mu    sync.Mutex
	locks map[string]*heldLock
}

type heldLock struct {
	token string
	stop  chan struct{}
}

// New returns a Storage on the Redis server at addr. Failures answer
// quickly (short timeouts, one retry) so that callers see an unreachable
// server as an error rather than a hang.
func New(addr string) *Storage {
	return &Storage{
		rdb: redis.NewClient(&redis.Options{
			Addr: addr, DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
			MaxRetries: 1, PoolSize: 8,
		}),
		locks: map[string]*heldLock{},
	}
}

var (
	_ certmagic.Storage      = (*Storage)(nil)
	_ caddy.StorageConverter = (*Module)(nil)
)

func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	return s.rdb.HSet(ctx, keyPrefix+key, "value", value, "modified", strconv.FormatInt(time.Now().UnixNano(), 10)).Err()
}

func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	b, err := s.rdb.HGet(ctx, keyPrefix+key, "value").Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fs.ErrNotExist
	}
	return b, err
}

// Delete removes key and, as certmagic's file_system does for a
// directory, every key under it.
func (s *Storage) Delete(ctx context.Context, key string) error {
	n, err := s.rdb.Del(ctx, keyPrefix+key).Result()
	if err != nil {
		return err
	}
	under, err := s.scan(ctx, key)
	if err != nil {
		return err
	}
	if len(under) > 0 {
		m, err := s.rdb.Del(ctx, under...).Result()
		if err != nil {
			return err
		}
		n += m
	}
	if n == 0 {
		return fs.ErrNotExist
	}
	return nil
}

func (s *Storage) Exists(ctx context.Context, key string) bool {
	if n, err := s.rdb.Exists(ctx, keyPrefix+key).Result(); err == nil && n > 0 {
		return true
	}
	under, err := s.scan(ctx, key)
	return err == nil && len(under) > 0
}

// scan returns the Redis keys of every storage key under dir.
func (s *Storage) scan(ctx context.Context, dir string) ([]string, error) {
	match := keyPrefix + globEscape(strings.TrimSuffix(dir, "/")) + "/*"
	if dir == "" {
		match = keyPrefix + "*"
	}
	var out []string
	iter := s.rdb.Scan(ctx, 0, match, 1000).Iterator()
	for iter.Next(ctx) {
		out = append(out, iter.Val())
	}
	return out, iter.Err()
}

func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\^`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// List lists the keys under prefix: all of them when recursive, else the
// immediate children (files and directories).
func (s *Storage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	under, err := s.scan(ctx, prefix)
	if err != nil {
		return nil, err
	}
	if len(under) == 0 {
		return nil, fs.ErrNotExist
	}
	dir := strings.TrimSuffix(prefix, "/")
	seen := map[string]bool{}
	var out []string
	for _, k := range under {
		k = strings.TrimPrefix(k, keyPrefix)
		if !recursive {
			rest := strings.TrimPrefix(k, dir+"/")
			if dir == "" {
				rest = k
			}
			first, _, _ := strings.Cut(rest, "/")
			k = path.Join(dir, first)
		}
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	vals, err := s.rdb.HMGet(ctx, keyPrefix+key, "value", "modified").Result()
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	if v, ok := vals[0].(string); ok {
		ns, _ := strconv.ParseInt(fmt.Sprint(vals[1]), 10, 64)
		return certmagic.KeyInfo{Key: key, Modified: time.Unix(0, ns), Size: int64(len(v)), IsTerminal: true}, nil
	}
	under, err := s.scan(ctx, key)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	if len(under) == 0 {
		return certmagic.KeyInfo{}, fs.ErrNotExist
	}
	return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
}

// Lock waits until it holds the lock name or ctx is done; a Redis error
// is returned at once.
func (s *Storage) Lock(ctx context.Context, name string) error {
	var tb [16]byte
	_, _ = rand.Read(tb[:])
	token := hex.EncodeToString(tb[:])
	for {
		ok, err := s.rdb.SetNX(ctx, lockPrefix+name, token, lockTTL).Result()
		if err != nil {
			return err
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(lockRetry):
		}
	}
	h := &heldLock{token: token, stop: make(chan struct{})}
	s.mu.Lock()
	if old := s.locks[name]; old != nil {
		close(old.stop)
	}
	s.locks[name] = h
	s.mu.Unlock()
	go s.refresh(name, h)
	return nil
}

var refreshScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end`)

var unlockScript = redis.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`)

// refresh extends a held lock's expiry until it is released.
func (s *Storage) refresh(name string, h *heldLock) {
	t := time.NewTicker(lockTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = refreshScript.Run(ctx, s.rdb, []string{lockPrefix + name}, h.token, lockTTL.Milliseconds()).Err()
			cancel()
		}
	}
}

// Unlock releases the lock name if this storage holds it.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	h := s.locks[name]
	delete(s.locks, name)
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("atomsphere_test_redis: lock %q is not held", name)
	}
	close(h.stop)
	return unlockScript.Run(ctx, s.rdb, []string{lockPrefix + name}, h.token).Err()
}
