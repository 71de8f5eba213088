package rulestore

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"atomspherecors/internal/policy"
)

// BenchmarkStoreEdit100k is the cost of applying one account's change
// to a store of 100 000 accounts (the overlay copy, and the merges it
// amortises), and BenchmarkStoreLookup100k a request's lookup in it.
func BenchmarkStoreEdit100k(b *testing.B) {
	v := storeView100k()
	one := &policy.Account{Origins: []policy.AllowedOrigin{{Origin: "https://x.example", Methods: &policy.MethodSet{List: []string{"GET"}}}}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		v = v.with(map[string]*policy.Account{fmt.Sprintf("edit-%d", i%50000): one})
	}
}

func BenchmarkStoreLookup100k(b *testing.B) {
	v := storeView100k()
	for i := range 300 {
		v = v.with(map[string]*policy.Account{fmt.Sprintf("edit-%d", i): {}})
	}
	s := &Store{}
	s.view.Store(v)
	b.ResetTimer()
	for i := range b.N {
		_ = s.Account("account-054321")
		_ = i
	}
}

func storeView100k() *accountsView {
	m := make(map[string]policy.Account, 100000)
	one := policy.Account{Origins: []policy.AllowedOrigin{{Origin: "https://a.example", Methods: &policy.MethodSet{List: []string{"GET"}}}}}
	for i := range 100000 {
		m[fmt.Sprintf("account-%06d", i)] = one
	}
	return newView(m)
}

// BenchmarkStoreIdlePoll is one poll of a store in which nothing
// changed, at 1 000 and 100 000 accounts: one read of the store's head,
// whatever the size (docs/store.md). The storage is in memory, so the
// figure is the store's own work, not a disk's.
func BenchmarkStoreIdlePoll(b *testing.B) {
	for _, n := range []int{1000, 100_000} {
		b.Run(fmt.Sprintf("accounts=%d", n), func(b *testing.B) {
			b.Setenv("XDG_DATA_HOME", b.TempDir())
			s := Open("bench", fmt.Sprintf("bench\n%d", n), dataDirFromEnv(), newMemStorage(), zap.NewNop(), time.Hour)
			defer func() { _ = s.Destruct() }()
			ctx := context.Background()
			rules := []policy.Rule{{Origin: "https://a.example", Methods: []string{"GET"}}}
			for lo := 0; lo < n; lo += 5000 {
				var batch []Change
				for i := lo; i < min(lo+5000, n); i++ {
					batch = append(batch, writeOf(b, s, fmt.Sprintf("account-%06d", i), rules...))
				}
				if _, err := s.Commit(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}
			if err := s.poll(ctx); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := s.poll(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if got := s.view.Load().count; got != n {
				b.Fatalf("store holds %d accounts, want %d", got, n)
			}
		})
	}
}

// memStorage is a certmagic.Storage in memory, for benchmarks and
// tests. dirs counts the keys under each directory, so that Exists is a
// map lookup at any size.
type memStorage struct {
	mu    sync.Mutex
	files map[string]memFile
	dirs  map[string]int
	locks map[string]bool
}

type memFile struct {
	data []byte
	mod  time.Time
}

func newMemStorage() *memStorage {
	return &memStorage{files: map[string]memFile{}, dirs: map[string]int{}, locks: map[string]bool{}}
}

func (m *memStorage) Lock(ctx context.Context, name string) error {
	for range 10000 {
		m.mu.Lock()
		if !m.locks[name] {
			m.locks[name] = true
			m.mu.Unlock()
			return nil
		}
		m.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("lock %s: timed out", name)
}

func (m *memStorage) Unlock(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.locks, name)
	return nil
}

// countDirs adds d to the count of every directory above key.
func (m *memStorage) countDirs(key string, d int) {
	for i := strings.LastIndexByte(key, '/'); i > 0; i = strings.LastIndexByte(key[:i], '/') {
		if m.dirs[key[:i]] += d; m.dirs[key[:i]] == 0 {
			delete(m.dirs, key[:i])
		}
	}
}

func (m *memStorage) Store(_ context.Context, key string, value []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.files[key]; !ok {
		m.countDirs(key, 1)
	}
	m.files[key] = memFile{bytes.Clone(value), time.Now()}
	return nil
}

func (m *memStorage) Load(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[key]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return bytes.Clone(f.data), nil
}

func (m *memStorage) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	found := false
	if _, ok := m.files[key]; ok {
		delete(m.files, key)
		m.countDirs(key, -1)
		found = true
	}
	if m.dirs[key] > 0 {
		for k := range m.files {
			if strings.HasPrefix(k, key+"/") {
				delete(m.files, k)
				m.countDirs(k, -1)
				found = true
			}
		}
	}
	if !found {
		return fs.ErrNotExist
	}
	return nil
}

func (m *memStorage) Exists(_ context.Context, key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.files[key]
	return ok || m.dirs[key] > 0
}

func (m *memStorage) List(_ context.Context, prefix string, recursive bool) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for k := range m.files {
		rest, ok := strings.CutPrefix(k, prefix+"/")
		if !ok {
			continue
		}
		name := k
		if !recursive {
			if first, _, more := strings.Cut(rest, "/"); more {
				name = prefix + "/" + first
			}
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, fs.ErrNotExist
	}
	slices.Sort(out)
	return out, nil
}

func (m *memStorage) Stat(_ context.Context, key string) (certmagic.KeyInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[key]
	if !ok {
		return certmagic.KeyInfo{}, fs.ErrNotExist
	}
	return certmagic.KeyInfo{Key: key, Modified: f.mod, Size: int64(len(f.data)), IsTerminal: true}, nil
}

var _ certmagic.Storage = (*memStorage)(nil)
