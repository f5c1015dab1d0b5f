// Command testsumdb is a test helper: it builds GOPROXY-layout module files
// and serves a private checksum database (sumdb) for them.
//
//	testsumdb mkmod -out DIR -mod PATH -ver VERSION -src SRCDIR
//	testsumdb serve -dir DIR [-name NAME] [-proxy]
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	"golang.org/x/mod/zip"
)

func main() {
	log.SetFlags(0)
	if len(os.Args) < 2 {
		log.Fatal("usage: testsumdb mkmod|serve ...")
	}
	switch os.Args[1] {
	case "mkmod":
		mkmod(os.Args[2:])
	case "serve":
		serve(os.Args[2:])
	default:
		log.Fatalf("unknown subcommand %q", os.Args[1])
	}
}

// mkmod writes <out>/<escaped path>/@v/<ver>.{zip,mod,info} and appends to list.
func mkmod(args []string) {
	fs := flag.NewFlagSet("mkmod", flag.ExitOnError)
	out := fs.String("out", "", "GOPROXY layout root")
	path := fs.String("mod", "", "module path")
	ver := fs.String("ver", "", "module version")
	src := fs.String("src", "", "module source dir (must contain go.mod)")
	fs.Parse(args)
	m := module.Version{Path: *path, Version: *ver}
	escPath, err := module.EscapePath(m.Path)
	check(err)
	escVer, err := module.EscapeVersion(m.Version)
	check(err)
	vdir := filepath.Join(*out, escPath, "@v")
	check(os.MkdirAll(vdir, 0o755))
	var buf bytes.Buffer
	check(zip.CreateFromDir(&buf, m, *src))
	check(os.WriteFile(filepath.Join(vdir, escVer+".zip"), buf.Bytes(), 0o644))
	gomod, err := os.ReadFile(filepath.Join(*src, "go.mod"))
	check(err)
	check(os.WriteFile(filepath.Join(vdir, escVer+".mod"), gomod, 0o644))
	info := fmt.Sprintf("{\"Version\":%q,\"Time\":%q}\n", m.Version, time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Format(time.RFC3339))
	check(os.WriteFile(filepath.Join(vdir, escVer+".info"), []byte(info), 0o644))
	f, err := os.OpenFile(filepath.Join(vdir, "list"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	check(err)
	fmt.Fprintln(f, m.Version)
	check(f.Close())
}

// db is an in-memory, append-only checksum database implementing sumdb.ServerOps.
type db struct {
	mu      sync.Mutex
	signer  note.Signer
	records [][]byte                 // record text by id
	ids     map[module.Version]int64 // module@version -> record id
	hashes  []tlog.Hash              // stored hashes, indexed by tlog.StoredHashIndex
	signed  []byte                   // signed tree head for the current size
}

func (d *db) readHashes(idx []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		if x < 0 || x >= int64(len(d.hashes)) {
			return nil, fmt.Errorf("hash index %d out of range", x)
		}
		out[i] = d.hashes[x]
	}
	return out, nil
}

// add appends the go.sum lines for m as one record and re-signs the tree.
func (d *db) add(m module.Version, text []byte) error {
	n := int64(len(d.records))
	hs, err := tlog.StoredHashes(n, text, tlog.HashReaderFunc(d.readHashes))
	if err != nil {
		return err
	}
	d.hashes = append(d.hashes, hs...)
	d.records = append(d.records, text)
	d.ids[m] = n
	th, err := tlog.TreeHash(n+1, tlog.HashReaderFunc(d.readHashes))
	if err != nil {
		return err
	}
	d.signed, err = note.Sign(&note.Note{Text: string(tlog.FormatTree(tlog.Tree{N: n + 1, Hash: th}))}, d.signer)
	return err
}

func (d *db) Signed(ctx context.Context) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.signed, nil
}

func (d *db) ReadRecords(ctx context.Context, id, n int64) ([][]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if id < 0 || id+n > int64(len(d.records)) {
		return nil, fmt.Errorf("records %d+%d out of range", id, n)
	}
	return d.records[id : id+n], nil
}

func (d *db) Lookup(ctx context.Context, m module.Version) (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, ok := d.ids[m]
	if !ok {
		// sumdb.Server uses os.IsNotExist (no unwrapping!) to answer 404, so
		// return a *PathError rather than fmt.Errorf("%w").
		return 0, &os.PathError{Op: "lookup", Path: m.Path + "@" + m.Version, Err: os.ErrNotExist}
	}
	return id, nil
}

func (d *db) ReadTileData(ctx context.Context, t tlog.Tile) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return tlog.ReadTileData(t, tlog.HashReaderFunc(d.readHashes))
}

// goSumLines computes "path ver h1:..." and "path ver/go.mod h1:..." from the layout files.
func goSumLines(m module.Version, zipFile, modFile string) ([]byte, error) {
	zh, err := dirhash.HashZip(zipFile, dirhash.Hash1)
	if err != nil {
		return nil, err
	}
	mh, err := dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) { return os.Open(modFile) })
	if err != nil {
		return nil, err
	}
	return []byte(fmt.Sprintf("%s %s %s\n%s %s/go.mod %s\n", m.Path, m.Version, zh, m.Path, m.Version, mh)), nil
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	dir := fs.String("dir", "", "GOPROXY layout root")
	name := fs.String("name", "sumdb.test", "checksum database name (key name)")
	proxy := fs.Bool("proxy", false, "also serve the layout as GOPROXY and the sumdb under /sumdb/<name>/ (proxy passthrough)")
	fs.Parse(args)

	skey, vkey, err := note.GenerateKey(rand.Reader, *name)
	check(err)
	signer, err := note.NewSigner(skey)
	check(err)
	d := &db{signer: signer, ids: map[module.Version]int64{}}

	// Find every <escaped path>/@v/<escaped ver>.zip with a matching .mod.
	var mods []module.Version
	check(filepath.WalkDir(*dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() || !strings.HasSuffix(p, ".zip") || filepath.Base(filepath.Dir(p)) != "@v" {
			return err
		}
		rel, _ := filepath.Rel(*dir, filepath.Dir(filepath.Dir(p)))
		mp, err := module.UnescapePath(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		mv, err := module.UnescapeVersion(strings.TrimSuffix(filepath.Base(p), ".zip"))
		if err != nil {
			return err
		}
		mods = append(mods, module.Version{Path: mp, Version: mv})
		return nil
	}))
	sort.Slice(mods, func(i, j int) bool {
		return mods[i].Path < mods[j].Path || mods[i].Path == mods[j].Path && mods[i].Version < mods[j].Version
	})
	for _, m := range mods {
		escPath, _ := module.EscapePath(m.Path)
		escVer, _ := module.EscapeVersion(m.Version)
		base := filepath.Join(*dir, escPath, "@v", escVer)
		text, err := goSumLines(m, base+".zip", base+".mod")
		check(err)
		check(d.add(m, text))
		log.Printf("record %d: %s", d.ids[m], strings.ReplaceAll(strings.TrimSpace(string(text)), "\n", " | "))
	}

	sumHandler := sumdb.NewServer(d)
	mux := http.NewServeMux()
	for _, p := range sumdb.ServerPaths { // "/lookup/", "/latest", "/tile/"
		mux.Handle(p, sumHandler)
	}
	if *proxy {
		prefix := "/sumdb/" + *name
		mux.HandleFunc(prefix+"/supported", func(w http.ResponseWriter, r *http.Request) {})
		mux.Handle(prefix+"/", http.StripPrefix(prefix, sumHandler))
		mux.Handle("/", http.FileServer(http.Dir(*dir)))
	}
	logged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Printf("REQ %s %s", r.Method, r.URL.Path)
		mux.ServeHTTP(w, r)
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	check(err)
	url := "http://" + ln.Addr().String()
	fmt.Printf("ADDR=%s\n", ln.Addr())
	fmt.Printf("GOSUMDB_KEY=%s\n", vkey)
	fmt.Printf("GOSUMDB=%s %s\n", vkey, url)
	os.Stdout.Sync()
	log.Fatal(http.Serve(ln, logged))
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
