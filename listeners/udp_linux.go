package listeners

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"strconv"
	"syscall"
)

// kernelDrops returns the datagrams the kernel dropped for pc's socket (the
// "drops" column of /proc/net/udp or udp6, found by the socket's inode), or
// 0 when it cannot tell.
func kernelDrops(pc *net.UDPConn) uint64 {
	rc, err := pc.SyscallConn()
	if err != nil {
		return 0
	}
	var ino uint64
	_ = rc.Control(func(fd uintptr) {
		var st syscall.Stat_t
		if syscall.Fstat(int(fd), &st) == nil {
			ino = st.Ino
		}
	})
	if ino == 0 {
		return 0
	}
	want := []byte(strconv.FormatUint(ino, 10))
	for _, table := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		if n, ok := dropsByInode(table, want); ok {
			return n
		}
	}
	return 0
}

// dropsByInode scans one /proc/net/udp* table for the line of inode ino.
// Columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref
// pointer drops.
func dropsByInode(table string, ino []byte) (uint64, bool) {
	data, err := os.ReadFile(table)
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 13 || !bytes.Equal(f[9], ino) {
			continue
		}
		n, err := strconv.ParseUint(string(f[len(f)-1]), 10, 64)
		return n, err == nil
	}
	return 0, false
}
