package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lxdD is an LXD daemon that a test started in a directory of its own, with
// a dir storage pool, no network and a busybox image "bb" imported locally.
// Instance names carry a prefix unique to the daemon, so that it shares no
// cgroup name with another test binary's daemon.
type lxdD struct {
	dir    string // LXD_DIR
	socket string
	cmd    *exec.Cmd
	exited chan struct{}
	prefix string
}

// lxdInit is the containers' init: loopback up, a TCP server on port
// $LISTEN that answers every connection with the instance's name, then wait
// for the stop signal (SIGPWR from lxc stop).
const lxdInit = `#!/bin/sh
trap 'exit 0' PWR TERM
ip link set lo up
if [ -n "$LISTEN" ]; then nc -ll -p "$LISTEN" -e /bin/hello & fi
while :; do sleep 1000 & wait $!; done
`

// lxdStart starts an LXD daemon for t; it is shut down with its instances
// when t ends. Without lxd, lxc or a static busybox the test skips, or fails
// under CI=true.
func lxdStart(t *testing.T) *lxdD {
	t.Helper()
	missing := ""
	for _, bin := range []string{"lxd", "lxc"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = bin + " is not installed"
		}
	}
	if missing == "" {
		if err := lxdStaticBusybox("/bin/busybox"); err != nil {
			missing = err.Error()
		}
	}
	if missing == "" && os.Geteuid() != 0 {
		missing = "the LXD daemon needs root"
	}
	if missing != "" {
		msg := missing + " (Debian packages lxd, lxd-client and busybox-static)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir, err := os.MkdirTemp("", "between-e2e-lxd-")
	if err != nil {
		t.Fatal(err)
	}
	suffix := make([]byte, 3)
	rand.Read(suffix)
	d := &lxdD{dir: dir, socket: filepath.Join(dir, "unix.socket"), exited: make(chan struct{}), prefix: "e" + hex.EncodeToString(suffix) + "-"}
	logf, err := os.Create(filepath.Join(dir, "daemon.out"))
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command("lxd", "--group", "", "--logfile", filepath.Join(dir, "lxd.log"))
	// The proxy variables keep the daemon from reaching out (it fetches
	// instance types at start); everything it needs here is local.
	d.cmd.Env = append(os.Environ(), "LXD_DIR="+dir, "https_proxy=http://127.0.0.1:9", "http_proxy=http://127.0.0.1:9",
		"HTTPS_PROXY=http://127.0.0.1:9", "HTTP_PROXY=http://127.0.0.1:9")
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// SIGPWR makes LXD stop its instances and exit, should the test binary die.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGPWR}
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	go func() {
		d.cmd.Wait()
		logf.Close()
		close(d.exited)
	}()
	t.Cleanup(func() { d.cleanup(t) })
	d.run(t, nil, "lxd", "waitready", "--timeout", "30")
	d.run(t, strings.NewReader(`config:
  images.auto_update_interval: "0"
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
`), "lxd", "init", "--preseed")
	img, err := lxdImage("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	imgPath := filepath.Join(dir, "bb.tar")
	if err := os.WriteFile(imgPath, img, 0o600); err != nil {
		t.Fatal(err)
	}
	d.lxc(t, "image", "import", imgPath, "--alias", "bb")
	t.Logf("LXD ready in %v (dir %s)", time.Since(start).Round(time.Millisecond), dir)
	return d
}

func lxdStaticBusybox(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("no busybox at %s: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is not statically linked", path)
		}
	}
	return nil
}

// lxdImage is a container image (metadata.yaml + rootfs) of a statically
// linked busybox for this machine's architecture, as a tar archive.
func lxdImage(busybox string) ([]byte, error) {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return nil, err
	}
	var arch []byte
	for _, c := range u.Machine {
		if c == 0 {
			break
		}
		arch = append(arch, byte(c))
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	add := func(h tar.Header, body []byte) error {
		h.ModTime = now
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	meta := fmt.Sprintf("architecture: %s\ncreation_date: %d\nproperties:\n  description: busybox for Between's tests\n  os: busybox\n", arch, now.Unix())
	entries := []struct {
		h    tar.Header
		body []byte
	}{{tar.Header{Name: "metadata.yaml", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(meta)}}
	for _, d := range []string{"rootfs/", "rootfs/bin/", "rootfs/sbin/", "rootfs/etc/", "rootfs/dev/", "rootfs/proc/", "rootfs/sys/", "rootfs/tmp/", "rootfs/run/"} {
		entries = append(entries, struct {
			h    tar.Header
			body []byte
		}{tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil})
	}
	for _, f := range []struct {
		name string
		body []byte
	}{{"rootfs/bin/busybox", bin}, {"rootfs/sbin/init", []byte(lxdInit)}, {"rootfs/bin/hello", []byte("#!/bin/sh\nhostname\n")}} {
		entries = append(entries, struct {
			h    tar.Header
			body []byte
		}{tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o755}, f.body})
	}
	for _, applet := range []string{"sh", "ip", "nc", "sleep", "hostname"} {
		entries = append(entries, struct {
			h    tar.Header
			body []byte
		}{tar.Header{Name: "rootfs/bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil})
	}
	for _, e := range entries {
		if err := add(e.h, e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// run runs an LXD command against the daemon with a deadline.
func (d *lxdD) run(t testing.TB, stdin *strings.Reader, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LXD_DIR="+d.dir, "LXD_CONF="+filepath.Join(d.dir, "client-conf"))
	if stdin != nil {
		cmd.Stdin = stdin
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (d *lxdD) lxc(t testing.TB, args ...string) string {
	t.Helper()
	return d.run(t, nil, "lxc", args...)
}

// cleanup shuts the daemon down with its instances, then removes its files.
func (d *lxdD) cleanup(t testing.TB) {
	select {
	case <-d.exited:
	default:
		d.cmd.Process.Signal(syscall.SIGCONT) // in case a test left it stopped
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, "lxd", "shutdown")
		cmd.Env = append(os.Environ(), "LXD_DIR="+d.dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("lxd shutdown: %v %s", err, out)
		}
		cancel()
		select {
		case <-d.exited:
		case <-time.After(30 * time.Second):
			t.Logf("LXD (pid %d) did not exit after shutdown; killing it", d.cmd.Process.Pid)
			d.cmd.Process.Kill()
			<-d.exited
		}
	}
	if t.Failed() {
		if log, err := os.ReadFile(filepath.Join(d.dir, "lxd.log")); err == nil {
			t.Logf("LXD log:\n%s", log)
		}
	}
	// nothing is left mounted after a clean shutdown; detach what a killed
	// daemon left
	if data, err := os.ReadFile("/proc/self/mounts"); err == nil {
		ls := strings.Split(string(data), "\n")
		for i := len(ls) - 1; i >= 0; i-- {
			if f := strings.Fields(ls[i]); len(f) > 1 && strings.HasPrefix(f[1], d.dir+"/") {
				syscall.Unmount(f[1], syscall.MNT_DETACH)
			}
		}
	}
	if err := os.RemoveAll(d.dir); err != nil {
		t.Logf("removing %s: %v", d.dir, err)
	}
}

// web creates a stopped instance that answers TCP connections with its name
// on 127.0.0.1:port of the host, through an LXD proxy device (the instance
// has no network of its own: only loopback, which is where its server
// listens). Its labels tell discovery the pool and the port.
func (d *lxdD) web(t testing.TB, name, pool string, port int) string {
	t.Helper()
	full := d.prefix + name
	d.lxc(t, "init", "bb", full, "-c", "environment.LISTEN=7000", "-c", "user.between.pool="+pool,
		"-c", "user.between.port="+strconv.Itoa(port))
	d.lxc(t, "config", "device", "add", full, "web", "proxy",
		fmt.Sprintf("listen=tcp:127.0.0.1:%d", port), "connect=tcp:127.0.0.1:7000")
	return full
}

// lxdDiscovered returns the host:port of the backends in the server's
// current discovery result.
func lxdDiscovered(t *testing.T, c *instance, server string) string {
	t.Helper()
	resp, err := http.Get("http://" + c.admin + "/between/servers/" + server + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s struct {
		Backends []struct {
			Host  string `json:"host"`
			Port  string `json:"port"`
			Stats struct {
				Discovered bool `json:"discovered"`
			} `json:"stats"`
		} `json:"backends"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range s.Backends {
		if b.Stats.Discovered {
			out = append(out, b.Host+":"+b.Port)
		}
	}
	return strings.Join(out, ",")
}

// TestDiscoveryLXD drives traffic through the real binary to LXD containers
// that a real LXD daemon starts and stops: a started, labelled container gets
// connections within about one interval; a stopped one leaves the list and
// traffic stops; an LXD that stops answering is logged and the last list
// keeps serving.
func TestDiscoveryLXD(t *testing.T) {
	d := lxdStart(t)
	p1, p2 := freePort(t), freePort(t)
	c1, c2 := d.web(t, "c1", "e2e", p1), d.web(t, "c2", "e2e", p2)
	stray := d.web(t, "stray", "other", freePort(t)) // running, but not in the pool
	d.lxc(t, "start", stray)

	addr := freeAddr(t)
	c := startCaddy(t, between(map[string]any{"lxd": map[string]any{
		"listen":  []string{shared(addr)},
		"balance": map[string]any{"policy": "roundrobin"},
		"discovery": map[string]any{
			"kind":                      "lxd",
			"lxd_server_address":        "unix://" + d.socket,
			"lxd_container_label_key":   "user.between.pool",
			"lxd_container_label_value": "e2e",
			"lxd_container_port_key":    "user.between.port",
			"lxd_container_interface":   "lo",
			"interval":                  "1s",
			"timeout":                   "1s",
		},
	}}))
	if got, err := ask(addr); err == nil && got != "" {
		t.Fatalf("with no container running, a client got %q", got)
	}

	// A container starts: the first connection that reaches it.
	start := time.Now()
	d.lxc(t, "start", c1)
	started := time.Since(start)
	waitFor(t, 10*time.Second, c1+" to answer through between", func() bool {
		got, _ := ask(addr)
		return got == c1
	})
	t.Logf("propagation: %s started (lxc start took %v) -> first connection reached it %v after lxc start began",
		c1, started.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	d.lxc(t, "start", c2)
	started = time.Since(start)
	waitFor(t, 10*time.Second, c2+" to answer through between", func() bool {
		got, _ := ask(addr)
		return got == c2
	})
	t.Logf("propagation: %s started (lxc start took %v) -> first connection reached it %v after lxc start began",
		c2, started.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	want := fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", p1, p2)
	if p2 < p1 {
		want = fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", p2, p1)
	}
	if got := lxdDiscovered(t, c, "lxd"); got != want {
		t.Fatalf("discovered %q, want %q (the stray container is not in the pool)", got, want)
	}

	// A container stops: it leaves the list, every client reaches the other.
	start = time.Now()
	d.lxc(t, "stop", c1)
	waitFor(t, 5*time.Second, c1+" to leave the list", func() bool {
		return lxdDiscovered(t, c, "lxd") == fmt.Sprintf("127.0.0.1:%d", p2)
	})
	t.Logf("propagation: %s stopped -> left the list %v after lxc stop began", c1, time.Since(start).Round(time.Millisecond))
	for i := 0; i < 10; i++ {
		if got, err := ask(addr); got != c2 {
			t.Fatalf("after %s stopped, client %d got %q (%v), want %s", c1, i, got, err, c2)
		}
	}

	// LXD stops answering: the fetch times out, the error is logged and the
	// last list keeps serving.
	d.cmd.Process.Signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			d.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	var failed string
	waitFor(t, 5*time.Second, "the failed discovery to be logged", func() bool {
		for _, line := range strings.Split(c.logs(), "\n") {
			if strings.Contains(line, "discovery failed") && strings.Contains(line, "lxd: listing instances") &&
				(strings.Contains(line, "timed out") || strings.Contains(line, "deadline exceeded")) {
				failed = line
				return true
			}
		}
		return false
	})
	t.Logf("LXD hangs -> logged: %s", failed)
	for i := 0; i < 5; i++ {
		if got, err := ask(addr); got != c2 {
			t.Fatalf("while LXD hangs, client %d got %q (%v), want %s from the last good list", i, got, err, c2)
		}
	}
	d.cmd.Process.Signal(syscall.SIGCONT)
	stopped = false

	// The last container stops: traffic stops.
	start = time.Now()
	d.lxc(t, "stop", c2)
	waitFor(t, 5*time.Second, "the list to be empty", func() bool { return lxdDiscovered(t, c, "lxd") == "" })
	t.Logf("propagation: %s stopped -> left the list %v after lxc stop began", c2, time.Since(start).Round(time.Millisecond))
	if got, err := ask(addr); err == nil && got != "" {
		t.Fatalf("with every pool container stopped, a client got %q", got)
	}
}
