package atomspherecors

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/rulestore"
)

// StoreConfig takes a handler's accounts from a rules store kept in
// Caddy's storage instead of from its config (docs/store.md). Every
// server whose handler names the same store in the same storage serves
// the same accounts; they are edited through the admin API routes under
// /atomsphere_cors/<name>/.
type StoreConfig struct {
	// The store's name: its accounts live under the storage keys
	// atomsphere_cors/<name>/. Letters, digits, ".", "_" and "-", at
	// most 64 characters.
	Name string `json:"name"`

	// How often the store is polled for other servers' writes.
	// Default: 1s.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// The storage module holding the store. Default: Caddy's storage
	// (the global storage option; file_system in Caddy's data
	// directory unless set).
	StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`

	// The largest body POST /atomsphere_cors/<name>/import takes, in
	// bytes; a larger one is refused with 413 and nothing written.
	// Default: 256 MiB (about 10^6 accounts of 3 rules).
	MaxImportSize int64 `json:"max_import_size,omitempty"`
}

const (
	defaultPollInterval = time.Second
)

// checkStore adds the problems of a handler's store settings to p.
func checkStore(h *Handler, p *policy.Problems) {
	s := h.Store
	if s == nil {
		return
	}
	at := policy.Place{Field: "store"}
	if len(h.Accounts) > 0 {
		p.Add(at, fmt.Errorf("store %s: a handler takes its accounts from its config or from a store, not both: "+
			"remove the %d inline accounts (import them with POST /atomsphere_cors/%s/import) or the store", q(s.Name), len(h.Accounts), s.Name))
	}
	if err := checkStoreName(s.Name); err != nil {
		p.Add(at, err)
	}
	if s.PollInterval < 0 || s.PollInterval > 0 && time.Duration(s.PollInterval) < 10*time.Millisecond {
		p.Add(at, fmt.Errorf("store %s: poll_interval %s is below 10ms", q(s.Name), time.Duration(s.PollInterval)))
	}
	if s.MaxImportSize < 0 {
		p.Add(at, fmt.Errorf("store %s: max_import_size %d is negative", q(s.Name), s.MaxImportSize))
	}
}

func checkStoreName(name string) error {
	if name == "" || len(name) > 64 || name == "." || name == ".." {
		return fmt.Errorf("store name %s must be 1-64 characters, not a dot segment", q(name))
	}
	if name == "explain" {
		return errors.New(`store name "explain" is taken by the explain command's admin route`)
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("store name %s may only have letters, digits, '.', '_' and '-'", q(name))
		}
	}
	return nil
}

// stores holds one accountStore per store name and storage config, for
// every handler that uses it: a reload that keeps the store settings
// reuses the loaded accounts, and the last handler to go stops it.
var stores = caddy.NewUsagePool()

// provisionStore gives the handler an index on its store's accounts:
// the config's own index checked it, with no accounts (a store's
// handler has none), so building it again costs nothing.
func (h *Handler) provisionStore(ctx caddy.Context, rewrites bool) error {
	if h.Store == nil {
		return nil
	}
	var s *rulestore.Store
	var err error
	if env, ok := ctx.Value(explainKey{}).(explainEnv); ok {
		s, err = h.readStoreOnce(ctx, env)
	} else {
		s, err = useStore(ctx, h.Store, h)
	}
	if err != nil {
		return err
	}
	h.store = s
	h.ix, err = newIndex(h, rewrites, s)
	return err
}

// useStore returns the loaded store that sc names, opening it for the
// first user, and records user (a handler or a page) as using it: the
// atomsphere_cors handler and the CORS page of one config share one
// loaded store per name and storage. releaseStore undoes it.
func useStore(ctx caddy.Context, sc *StoreConfig, user any) (*rulestore.Store, error) {
	if err := registerStoreMetrics(ctx); err != nil {
		return nil, err
	}
	st := ctx.Storage()
	var storageKey string
	storageRaw := sc.StorageRaw // loading the module clears the field
	if sc.StorageRaw != nil {
		var b bytes.Buffer
		if err := json.Compact(&b, sc.StorageRaw); err != nil {
			return nil, fmt.Errorf("store %s: storage: %v", q(sc.Name), err)
		}
		storageKey = b.String()
		mod, err := ctx.LoadModule(sc, "StorageRaw")
		if err != nil {
			return nil, fmt.Errorf("store %s: loading storage module: %v", q(sc.Name), err)
		}
		conv, ok := mod.(caddy.StorageConverter)
		if !ok {
			return nil, fmt.Errorf("store %s: module %T is not a storage", q(sc.Name), mod)
		}
		if st, err = conv.CertMagicStorage(); err != nil {
			return nil, fmt.Errorf("store %s: storage: %v", q(sc.Name), err)
		}
	} else {
		if st == nil {
			return nil, fmt.Errorf("store %s: Caddy has no storage", q(sc.Name))
		}
		cfg, err := json.Marshal(st)
		if err != nil {
			cfg = []byte(fmt.Sprintf("%p", st))
		}
		storageKey = fmt.Sprintf("%T %s", st, cfg)
	}
	if fst, ok := st.(*certmagic.FileStorage); ok {
		// The same directory, named in a storage block or as Caddy's
		// storage, is the same store.
		storageKey = "file_system " + filepath.Clean(fst.Path)
	}
	interval := time.Duration(sc.PollInterval)
	if interval == 0 {
		interval = defaultPollInterval
	}
	settings := fmt.Sprintf("poll_interval %s, max_import_size %d", interval, cmp.Or(sc.MaxImportSize, rulestore.DefaultMaxImportSize))
	if err := claimStoreName(ctx, sc.Name, storageKey, storageRaw, settings); err != nil {
		return nil, err
	}
	key := sc.Name + "\n" + storageKey
	logger := ctx.Logger().Named("store")
	val, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return rulestore.Open(sc.Name, key, caddy.AppDataDir(), st, logger, interval), nil
	})
	if err != nil {
		return nil, err
	}
	s := val.(*rulestore.Store)
	s.AddUser(user, st, logger, interval)
	s.MaxImport.Store(cmp.Or(sc.MaxImportSize, rulestore.DefaultMaxImportSize))
	return s, nil
}

// releaseStore lets go of user's store: the last user stops its poller.
func releaseStore(s *rulestore.Store, user any) error {
	s.RemoveUser(user)
	_, err := stores.Delete(s.Key)
	return err
}

// storeClaims holds, for each config being loaded or running (told apart
// by its context's Done channel), the storage and place of the first
// handler naming each store. The admin routes address a store by its
// name alone, so within one config a name must mean one storage: a
// second storage under the same name would take writes that the
// handlers of the first never see.
var storeClaims struct {
	sync.Mutex
	byConfig map[<-chan struct{}]map[string]storeClaim
}

type storeClaim struct {
	storageKey string
	settings   string // poll_interval and max_import_size, defaults applied
	where      string
}

// claimStoreName records that this config's handler names store name in
// the storage storageKey, and refuses a config whose handlers give one
// store name two storages.
func claimStoreName(ctx caddy.Context, name, storageKey string, raw json.RawMessage, settings string) error {
	where := "Caddy's storage (" + storageKey + ")"
	if raw != nil {
		var b bytes.Buffer
		_ = json.Compact(&b, raw)
		where = "storage " + b.String()
	}
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv != nil {
		where += fmt.Sprintf(" (a handler of server %s)", q(srv.Name()))
	}
	done := ctx.Done()
	if done == nil {
		return nil
	}
	storeClaims.Lock()
	defer storeClaims.Unlock()
	if storeClaims.byConfig == nil {
		storeClaims.byConfig = map[<-chan struct{}]map[string]storeClaim{}
	}
	claims := storeClaims.byConfig[done]
	if claims == nil {
		claims = map[string]storeClaim{}
		storeClaims.byConfig[done] = claims
		go func() {
			<-done
			storeClaims.Lock()
			delete(storeClaims.byConfig, done)
			storeClaims.Unlock()
		}()
	}
	c, ok := claims[name]
	if !ok {
		claims[name] = storeClaim{storageKey: storageKey, settings: settings, where: where}
		return nil
	}
	if c.storageKey != storageKey {
		return fmt.Errorf("store %s is named with two different storages in this config: %s, and %s; "+
			"the admin routes /atomsphere_cors/%s/ reach one store by its name, so give the handlers the same storage "+
			"settings (one shared store) or different store names", q(name), c.where, where, name)
	}
	if c.settings != settings {
		return fmt.Errorf("store %s is named with two different settings in this config: %s in %s, and %s in %s; "+
			"one store has one poll interval and one import limit, so give the handlers the same settings",
			q(name), c.settings, c.where, settings, where)
	}
	return nil
}

// Cleanup lets go of the handler's store: the last handler using it
// stops its poller.
func (h *Handler) Cleanup() error {
	if h.store == nil {
		return nil
	}
	return releaseStore(h.store, h)
}

var _ caddy.CleanerUpper = (*Handler)(nil)

// explainKey marks, in the context of the explain command, the handlers
// it provisions from a config file: their store is read once, read-only.
type explainKey struct{}

// explainEnv is what the explain command knows of the config besides
// its handlers: Caddy's storage, as the config sets it (nil for the
// default, file_system in Caddy's data directory).
type explainEnv struct {
	storageRaw json.RawMessage
}

// readStoreOnce reads the handler's store once for the explain command:
// no snapshot, no poller, nothing written, no store registered for the
// admin routes. A store that cannot be read is an error; an empty one
// has no accounts.
func (h *Handler) readStoreOnce(ctx caddy.Context, env explainEnv) (*rulestore.Store, error) {
	name := h.Store.Name
	raw := h.Store.StorageRaw
	if raw == nil {
		raw = env.storageRaw
	}
	var st certmagic.Storage = caddy.DefaultStorage
	if raw != nil {
		holder := struct {
			StorageRaw json.RawMessage `caddy:"namespace=caddy.storage inline_key=module"`
		}{raw}
		loaded, err := ctx.LoadModule(&holder, "StorageRaw")
		if err != nil {
			return nil, fmt.Errorf("store %s: loading storage module: %v", q(name), err)
		}
		conv, ok := loaded.(caddy.StorageConverter)
		if !ok {
			return nil, fmt.Errorf("store %s: module %T is not a storage", q(name), loaded)
		}
		if st, err = conv.CertMagicStorage(); err != nil {
			return nil, fmt.Errorf("store %s: storage: %v", q(name), err)
		}
	}
	s, err := rulestore.ReadOnce(ctx, name, caddy.AppDataDir(), st)
	if err != nil {
		return nil, fmt.Errorf("store %s: reading it: %v", q(name), err)
	}
	return s, nil
}
