/* A 32-bit (i386) static executable, for the refusal test: an LWK enclave
 * runs x86-64 programs only. Freestanding (write and exit through int 0x80)
 * so it builds with `gcc -m32 -nostdlib` even where no 32-bit C library is
 * installed (gcc-multilib). Natively it prints "hello, world (i386)" and
 * exits 0.
 */
static const char msg[] = "hello, world (i386)\n";

void _start(void)
{
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(4), "b"(1), "c"(msg), "d"(sizeof msg - 1)
                     : "memory");
    __asm__ volatile("int $0x80" : : "a"(1), "b"(0));
    for (;;)
        ;
}
