/* WASI p1 test program: `probe MODE [ARG]`, built with clang --target=wasm32-wasi. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "args")) { /* one argument per line, argv0 included */
        for (int i = 0; i < argc; i++) printf("%s\n", argv[i]);
        return 0;
    }
    if (!strcmp(mode, "env")) {
        for (char **e = environ; *e; e++) printf("%s\n", *e);
        return 0;
    }
    if (!strcmp(mode, "cat")) { /* stdin to stdout */
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
        return 0;
    }
    if (!strcmp(mode, "ls")) {
        DIR *dir = opendir(argc > 2 ? argv[2] : "/");
        if (!dir) { perror("opendir"); return 1; }
        for (struct dirent *e; (e = readdir(dir));) printf("%s\n", e->d_name);
        closedir(dir);
        return 0;
    }
    if (!strcmp(mode, "alloc")) { /* 1 MiB blocks until malloc fails (at most 512) */
        void **head = 0;
        int mib = 0;
        for (; mib < 512; mib++) {
            void **block = malloc(1 << 20);
            if (!block) break;
            *block = head; /* keep every block reachable so -O2 cannot drop the malloc */
            head = block;
            __asm__ volatile("" : : "r"(head) : "memory");
        }
        printf("allocated %d MiB\n", mib);
        return mib < 512 ? 3 : 0;
    }
    if (!strcmp(mode, "sleep")) { /* blocked in a host call: epochs cannot interrupt it */
        sleep(60);
        return 0;
    }
    fprintf(stderr, "usage: probe args|env|cat|ls [dir]|alloc|sleep\n");
    return 2;
}
