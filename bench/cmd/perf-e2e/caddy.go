package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// adminAddr is the admin API of the Caddy processes of parts 1 to 3;
// part 4 (store.go) gives each of its processes its own.
const adminAddr = "127.0.0.1:2993"

// client talks to loopback only: no proxy from the environment, no
// connection kept across Caddy restarts.
var client = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

var lookPath = exec.LookPath

// command returns cmd in a process group of its own, so that on a timeout
// or an interrupt it is killed together with what it started (go run's
// build, xcaddy's go build), by its pid.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// repoRoot finds the atomspherecors checkout: -repo, or the first
// directory at or above the current one whose go.mod declares module
// atomspherecors.
func (r *runner) repoRoot() (string, error) {
	if r.cfg.repo != "" {
		return filepath.Abs(r.cfg.repo)
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 20 {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			for line := range strings.Lines(string(b)) {
				if f := strings.Fields(line); len(f) == 2 && f[0] == "module" && f[1] == "atomspherecors" {
					return dir, nil
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("no atomspherecors checkout at or above the current directory: run from the repository or pass -repo")
}

// caddyBinary sets r.caddy: -caddy when it exists, else a Caddy built with
// xcaddy from the checkout (at -caddy, or in the work directory).
func (r *runner) caddyBinary(ctx context.Context) error {
	path := r.cfg.caddy
	if path == "" {
		path = filepath.Join(r.work, "caddy")
	}
	path, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		say("== caddy: using %s", path)
	} else {
		root, err := r.repoRoot()
		if err != nil {
			return err
		}
		if _, err := lookPath("go"); err != nil {
			return errors.New("go is needed on PATH to build Caddy (or pass -caddy with a built binary)")
		}
		say("== build caddy %s with the module from %s (xcaddy; the first build downloads Caddy's dependencies)", caddyVersion, root)
		tmp := filepath.Join(r.work, "build-tmp")
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			return err
		}
		bctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
		defer cancel()
		cmd := command(bctx, "go", "run", xcaddyPackage, "build", caddyVersion,
			"--with", "atomspherecors="+root, "--output", path)
		cmd.Dir = tmp
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		log := filepath.Join(r.work, "build.log")
		out, err := os.Create(log)
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = out, out
		t0 := time.Now()
		err = cmd.Run()
		out.Close()
		if err != nil {
			return fmt.Errorf("building caddy: %v; the end of %s:\n%s", err, log, tail(log, 20))
		}
		say("built %s in %s", path, time.Since(t0).Round(time.Second))
		if r.cfg.caddy == "" && r.removeWk {
			say("(pass -caddy <path> to build once and reuse it)")
		}
	}
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := command(lctx, path, "list-modules").Output()
	if err != nil {
		return fmt.Errorf("%s list-modules: %v", path, err)
	}
	found := false
	for line := range strings.Lines(string(out)) {
		found = found || strings.TrimSpace(line) == moduleID
	}
	if !found {
		return fmt.Errorf("%s lacks %s", path, moduleID)
	}
	r.caddy = path
	return nil
}

// proc is a Caddy started here.
type proc struct {
	pid   int
	log   string
	admin string        // its admin API's address
	xdg   string        // holds its XDG_CONFIG_HOME (config) and XDG_DATA_HOME (data)
	done  chan struct{} // closed when `caddy run` exits; nil for `caddy start`
}

// caddyOpts are the settings of one Caddy process; the zero value is
// that of parts 1 to 3.
type caddyOpts struct {
	admin string   // the admin address of its config; default adminAddr
	xdg   string   // an existing directory for its XDG dirs; default a new one
	env   []string // more environment variables (GODEBUG=...)
}

func (o caddyOpts) adminAddr() string {
	if o.admin == "" {
		return adminAddr
	}
	return o.admin
}

// alive reports whether the process is still running (a zombie is not).
func (p *proc) alive() bool {
	if p.done != nil {
		select {
		case <-p.done:
			return false
		default:
			return true
		}
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) state ...: the state follows the last ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

// newXDG makes the directory of one Caddy's config and data directories
// in the work directory, never the user's.
func (r *runner) newXDG() (string, error) {
	return os.MkdirTemp(r.work, "xdg-")
}

// caddyEnv is the environment of one Caddy: its config and data
// directories under dir (a new one when empty), and extra.
func (r *runner) caddyEnv(dir string, extra ...string) ([]string, string, error) {
	if dir == "" {
		var err error
		if dir, err = r.newXDG(); err != nil {
			return nil, "", err
		}
	}
	env := []string{"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"), "XDG_DATA_HOME=" + filepath.Join(dir, "data")}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "XDG_CONFIG_HOME=") && !strings.HasPrefix(kv, "XDG_DATA_HOME=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...), dir, nil
}

// ensureFree fails when one of addrs is taken: another Caddy there would
// be measured, or stopped, instead of ours.
func ensureFree(addrs ...string) error {
	for _, a := range addrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("%s is taken (a Caddy of an earlier run still up?): %v", a, err)
		}
		l.Close()
	}
	return nil
}

// runCaddy starts `caddy run` with args and waits for its admin API.
func (r *runner) runCaddy(ctx context.Context, name string, args ...string) (*proc, error) {
	env, xdg, err := r.caddyEnv("")
	if err != nil {
		return nil, err
	}
	log := filepath.Join(r.work, name+".log")
	out, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := exec.Command(r.caddy, append([]string{"run"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, r.work, out, out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{pid: cmd.Process.Pid, log: log, admin: adminAddr, xdg: xdg, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	r.procs = append(r.procs, p)
	return p, r.waitAdmin(ctx, p)
}

// startCaddy runs `caddy start` with a config file, which returns once
// the config runs (or failed), and reports how long that took.
func (r *runner) startCaddy(ctx context.Context, name, configFile string) (*proc, time.Duration, error) {
	return r.startCaddyOpts(ctx, name, configFile, caddyOpts{})
}

// startCaddyOpts is startCaddy with the process's settings: the config
// file must listen for the admin API on opts' address.
func (r *runner) startCaddyOpts(ctx context.Context, name, configFile string, opts caddyOpts) (*proc, time.Duration, error) {
	env, xdg, err := r.caddyEnv(opts.xdg, opts.env...)
	if err != nil {
		return nil, 0, err
	}
	pidfile := filepath.Join(r.work, name+".pid")
	os.Remove(pidfile)
	log := filepath.Join(r.work, name+".log")
	sctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	// A file, not a pipe: `caddy run` inherits it and keeps it open.
	out, err := os.Create(log)
	if err != nil {
		return nil, 0, err
	}
	defer out.Close()
	cmd := command(sctx, r.caddy, "start", "--config", configFile, "--pidfile", pidfile)
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, r.work, out, out
	t0 := time.Now()
	err = cmd.Run()
	took := time.Since(t0)
	// `caddy start` leaves `caddy run` running in its process group;
	// record it before anything else, so that it is stopped.
	var p *proc
	if b, rerr := os.ReadFile(pidfile); rerr == nil {
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
			p = &proc{pid: pid, log: log, admin: opts.adminAddr(), xdg: xdg}
			r.procs = append(r.procs, p)
		}
	}
	if err != nil {
		return p, took, fmt.Errorf("caddy start: %v; the end of %s:\n%s", err, log, tail(log, 20))
	}
	if p == nil {
		return nil, took, fmt.Errorf("caddy start wrote no pid to %s", pidfile)
	}
	return p, took, r.waitAdmin(ctx, p)
}

// waitAdmin waits, at most a minute, until the admin API answers. It
// reads /config/admin, not /config/: the whole config of -big accounts
// inline is 20 MB of JSON to encode, which would weigh on the figures
// taken right after a start (RSS, the first preflight).
func (r *runner) waitAdmin(ctx context.Context, p *proc) error {
	for range 600 {
		if !p.alive() {
			return fmt.Errorf("caddy (pid %d) exited; the end of %s:\n%s", p.pid, p.log, tail(p.log, 20))
		}
		if a, err := adminAt(ctx, p.admin, http.MethodGet, "/config/admin", nil, nil); err == nil && a.status == http.StatusOK {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("the admin API at %s did not come up in a minute; the end of %s:\n%s", p.admin, p.log, tail(p.log, 20))
}

// stop stops p through the admin API, or else by its pid.
func (r *runner) stop(p *proc) { r.stopWithin(p, 10*time.Second) }

// stopWithin stops p through the admin API, waiting at most d for it to
// exit (a store writes its snapshot as it stops), or else kills it by
// its pid; it reports whether p exited by itself.
func (r *runner) stopWithin(p *proc, d time.Duration) bool {
	if !p.alive() {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = adminAt(ctx, p.admin, http.MethodPost, "/stop", nil, nil)
	if waitExit(p, d) {
		return true
	}
	say("caddy pid %d did not stop through the admin API within %s: killing it", p.pid, d)
	_ = syscall.Kill(p.pid, syscall.SIGKILL)
	if !waitExit(p, 5*time.Second) {
		say("caddy pid %d is still running", p.pid)
	}
	return false
}

func waitExit(p *proc, d time.Duration) bool {
	for range int(d / (100 * time.Millisecond)) {
		if !p.alive() {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return !p.alive()
}

// rssBytes is the resident set size of pid, 0 when unknown.
func rssBytes(pid int) float64 { return statusBytes(pid, "VmRSS") }

// peakRSSBytes is the peak resident set size of pid (VmHWM), 0 when
// unknown.
func peakRSSBytes(pid int) float64 { return statusBytes(pid, "VmHWM") }

// statusBytes is a "kB" field of /proc/<pid>/status in bytes, 0 when
// unknown.
func statusBytes(pid int, field string) float64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	return 0
}

// userHZ is the unit of utime and stime in /proc/<pid>/stat: USER_HZ,
// 100 on Linux whatever the kernel's HZ (getconf CLK_TCK).
const userHZ = 100

// cpuTime is the CPU time pid used so far, user and system
// (utime+stime of /proc/<pid>/stat, 10 ms steps).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	ticks, err := parseStatTicks(string(b))
	return time.Duration(ticks) * time.Second / userHZ, err
}

// parseStatTicks returns utime+stime, in clock ticks, from a line of
// /proc/<pid>/stat: fields 14 and 15, counted from the pid, the command
// in parentheses (which may hold spaces) as field 2.
func parseStatTicks(stat string) (int64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("no ')' in %.80q", stat)
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3, the state
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command in %.80q", len(f), stat)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return utime + stime, nil
}

// schedTime is the time pid's threads ran on a CPU so far, in
// nanoseconds (the first field of each /proc/<pid>/task/*/schedstat):
// finer than cpuTime, but threads that exited are not counted.
func schedTime(pid int) (time.Duration, error) {
	tasks, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/schedstat")
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("no schedstat for pid %d (%v)", pid, err)
	}
	var sum int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %v", t, err)
		}
		sum += ns
	}
	return time.Duration(sum), nil
}

// answer is a response, read whole.
type answer struct {
	status int
	header http.Header
	body   string // the first 4 KB
	took   time.Duration
}

// adminDo sends one request to the admin API of parts 1 to 3.
func adminDo(ctx context.Context, method, path string, body []byte, hdr http.Header) (answer, error) {
	return adminAt(ctx, adminAddr, method, path, body, hdr)
}

// adminAt sends one request to the admin API at addr.
func adminAt(ctx context.Context, addr, method, path string, body []byte, hdr http.Header) (answer, error) {
	return do(ctx, method, "http://"+addr+path, body, hdr)
}

// do sends one request and reads the whole answer, within ten minutes,
// timing it from the request to the end of the body.
func do(ctx context.Context, method, url string, body []byte, hdr http.Header) (answer, error) {
	return doWith(ctx, client, method, url, body, hdr)
}

// doWith is do with another client.
func doWith(ctx context.Context, c *http.Client, method, url string, body []byte, hdr http.Header) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return answer{took: time.Since(t0)}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	return answer{resp.StatusCode, resp.Header, string(b), time.Since(t0)}, err
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
