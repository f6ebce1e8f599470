package testpeers

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// LXD is an LXD daemon that a test started in a directory of its own, with a
// dir storage pool, no network and a busybox image "bb" imported locally.
// Instance names should carry Prefix, unique to the daemon, so that two
// daemons (say one per test binary) never share a cgroup name.
//
// The image's init brings loopback up, gives eth0 the addresses in the
// environment keys ADDR4 and ADDR6 when set, runs a TCP server on port
// $LISTEN (when set) that answers every connection with the instance's
// name, then waits for the stop signal (SIGPWR from lxc stop).
type LXD struct {
	// Dir is LXD_DIR.
	Dir string
	// Socket is the path of the daemon's unix socket.
	Socket string
	// Prefix is the start of every instance name of this daemon.
	Prefix string

	cmd    *exec.Cmd
	exited chan struct{}
}

// needLXD skips (locally) or fails (CI=true) when LXD cannot be run here.
func needLXD(t testing.TB) {
	t.Helper()
	missing := ""
	for _, bin := range []string{"lxd", "lxc"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = bin + " is not installed"
		}
	}
	if missing == "" && !staticBinary("/bin/busybox") {
		missing = "/bin/busybox is missing or not statically linked"
	}
	if missing == "" && os.Geteuid() != 0 {
		missing = "the LXD daemon needs root"
	}
	if missing != "" {
		Missing(t, missing+" (Debian packages lxd, lxd-client and busybox-static)")
	}
}

// lxdInit is the containers' init; see LXD.
const lxdInit = `#!/bin/sh
trap 'exit 0' PWR TERM
ip link set lo up
if [ -n "$ADDR4" ]; then ip link set eth0 up; ip addr add "$ADDR4" dev eth0; fi
if [ -n "$ADDR6" ]; then ip link set eth0 up; ip addr add "$ADDR6" dev eth0; fi
if [ -n "$LISTEN" ]; then nc -ll -p "$LISTEN" -e /bin/hello & fi
while :; do sleep 1000 & wait $!; done
`

// lxdImage is a container image (metadata.yaml + rootfs) of a statically
// linked busybox for this machine's architecture, as a tar archive.
func lxdImage(busybox string) ([]byte, error) {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	add := func(h *tar.Header, body []byte) error {
		h.ModTime = now
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	meta := fmt.Sprintf("architecture: %s\ncreation_date: %d\nproperties:\n  description: busybox for Between's tests\n  os: busybox\n", machineArch(), now.Unix())
	files := []struct {
		h    tar.Header
		body []byte
	}{
		{tar.Header{Name: "metadata.yaml", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(meta)},
		{tar.Header{Name: "rootfs/bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bin},
		{tar.Header{Name: "rootfs/sbin/init", Typeflag: tar.TypeReg, Mode: 0o755}, []byte(lxdInit)},
		{tar.Header{Name: "rootfs/bin/hello", Typeflag: tar.TypeReg, Mode: 0o755}, []byte("#!/bin/sh\nhostname\n")},
	}
	for _, d := range []string{"rootfs/", "rootfs/bin/", "rootfs/sbin/", "rootfs/etc/", "rootfs/dev/", "rootfs/proc/", "rootfs/sys/", "rootfs/tmp/", "rootfs/run/"} {
		if err := add(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		if err := add(&f.h, f.body); err != nil {
			return nil, err
		}
	}
	for _, applet := range []string{"sh", "ip", "nc", "sleep", "hostname", "ps", "cat"} {
		if err := add(&tar.Header{Name: "rootfs/bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// StartLXD starts an LXD daemon for t (and its subtests) whose instance
// names begin with namePrefix, a random suffix and "-"; it is shut down with
// its instances when t ends. Without lxd, lxc, a static /bin/busybox or root
// the test skips, or fails when CI=true.
func StartLXD(t testing.TB, namePrefix string) *LXD {
	t.Helper()
	needLXD(t)
	dir, err := os.MkdirTemp("", "between-lxd-")
	if err != nil {
		t.Fatal(err)
	}
	suffix := make([]byte, 3)
	rand.Read(suffix)
	d := &LXD{Dir: dir, Socket: filepath.Join(dir, "unix.socket"), exited: make(chan struct{}), Prefix: namePrefix + hex.EncodeToString(suffix) + "-"}
	if err := os.MkdirAll(filepath.Join(dir, "client-conf"), 0o700); err != nil {
		t.Fatal(err)
	}
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
	d.cmd.SysProcAttr = lxdProcAttr()
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
	d.Run(t, nil, "lxd", "waitready", "--timeout", "30")
	d.Run(t, strings.NewReader(`config:
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
	d.Lxc(t, "image", "import", imgPath, "--alias", "bb")
	t.Logf("LXD %s ready in %v (dir %s)", strings.TrimSpace(d.Run(t, nil, "lxd", "--version")), time.Since(start).Round(time.Millisecond), dir)
	return d
}

// Run runs an LXD command (lxd or lxc) against the daemon with a deadline of
// 60s and returns its combined output; an error fails the test.
func (d *LXD) Run(t testing.TB, stdin *strings.Reader, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LXD_DIR="+d.Dir, "LXD_CONF="+filepath.Join(d.Dir, "client-conf"))
	if stdin != nil {
		cmd.Stdin = stdin
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Lxc runs lxc against the daemon; see Run.
func (d *LXD) Lxc(t testing.TB, args ...string) string {
	t.Helper()
	return d.Run(t, nil, "lxc", args...)
}

// Signal sends sig to the daemon's process (SIGSTOP and SIGCONT make it hang
// and go on).
func (d *LXD) Signal(sig os.Signal) error {
	return d.cmd.Process.Signal(sig)
}

// Pause stops the daemon's process (SIGSTOP): it hangs, its socket accepts
// but nothing answers, until Resume.
func (d *LXD) Pause() error { return pause(d.cmd.Process) }

// Resume continues the process that Pause stopped (SIGCONT).
func (d *LXD) Resume() error { return resume(d.cmd.Process) }

// cleanup shuts the daemon down with its instances, then removes its files.
func (d *LXD) cleanup(t testing.TB) {
	select {
	case <-d.exited:
	default:
		_ = resume(d.cmd.Process) // in case a test left it stopped
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, "lxd", "shutdown")
		cmd.Env = append(os.Environ(), "LXD_DIR="+d.Dir)
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
		if log, err := os.ReadFile(filepath.Join(d.Dir, "lxd.log")); err == nil {
			t.Logf("LXD log:\n%s", log)
		}
	}
	// nothing is left mounted after a clean shutdown; detach what a killed
	// daemon left
	unmountUnder(d.Dir)
	if err := os.RemoveAll(d.Dir); err != nil {
		t.Logf("removing %s: %v", d.Dir, err)
	}
}
