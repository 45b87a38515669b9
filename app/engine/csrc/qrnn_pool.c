/* A small thread pool for the qrnn runtime: one parallel region per step, with barriers inside it.
 *
 * Workers spin briefly on a generation counter (a decoding loop calls back within microseconds), then
 * sleep on a condition variable, so an idle model costs no CPU. No OpenMP: its wait policy is process-wide
 * and torch sets it (app/__init__.py sets OMP_WAIT_POLICY=PASSIVE for training).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "qrnn_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_ROUNDS 20000 /* ~0.2-1 ms of pause instructions before a worker sleeps */

struct qrnn_pool {
    int threads;
    pthread_t *workers;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    atomic_uint generation; /* bumped once per region */
    atomic_int finished;    /* workers done with the current region */
    atomic_int stop;
    qrnn_task task;
    void *ctx;
    /* barrier: arrivals and a sense flipped by the last arrival */
    atomic_int arrived;
    atomic_uint barrier_sense;
};

typedef struct {
    qrnn_pool *pool;
    int tid;
} worker_arg;

static void *worker_main(void *p) {
    worker_arg arg = *(worker_arg *)p;
    free(p);
    qrnn_pool *pool = arg.pool;
    unsigned seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool->generation, memory_order_acquire) == seen &&
               !atomic_load_explicit(&pool->stop, memory_order_acquire)) {
            if (++spins < SPIN_ROUNDS) {
                CPU_RELAX();
                continue;
            }
            pthread_mutex_lock(&pool->mutex);
            while (atomic_load_explicit(&pool->generation, memory_order_acquire) == seen &&
                   !atomic_load_explicit(&pool->stop, memory_order_acquire))
                pthread_cond_wait(&pool->wake, &pool->mutex);
            pthread_mutex_unlock(&pool->mutex);
        }
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) return NULL;
        seen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        pool->task(pool->ctx, arg.tid, pool->threads);
        atomic_fetch_add_explicit(&pool->finished, 1, memory_order_acq_rel);
    }
}

qrnn_pool *qrnn_pool_new(int threads) {
    if (threads < 1) {
        qrnn_set_error("threads must be >= 1, got %d", threads);
        return NULL;
    }
    qrnn_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->threads = threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->workers = calloc((size_t)threads, sizeof(pthread_t));
    for (int t = 1; t < threads; ++t) {
        worker_arg *arg = malloc(sizeof *arg);
        if (!arg) goto fail;
        arg->pool = pool, arg->tid = t;
        if (pthread_create(&pool->workers[t], NULL, worker_main, arg) != 0) {
            free(arg);
            goto fail;
        }
        pool->threads = t + 1; /* workers started so far, in case a later start fails */
    }
    pool->threads = threads;
    return pool;
fail:
    qrnn_set_error("could not start %d threads", threads);
    qrnn_pool_free(pool);
    return NULL;
}

void qrnn_pool_free(qrnn_pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stop, 1);
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int t = 1; t < pool->threads; ++t)
        if (pool->workers[t]) pthread_join(pool->workers[t], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    free(pool->workers);
    free(pool);
}

int qrnn_pool_threads(const qrnn_pool *pool) { return pool->threads; }

void qrnn_pool_run(qrnn_pool *pool, qrnn_task task, void *ctx) {
    if (pool->threads == 1) {
        task(ctx, 0, 1);
        return;
    }
    pool->task = task;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->finished, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_acq_rel);
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    task(ctx, 0, pool->threads);
    while (atomic_load_explicit(&pool->finished, memory_order_acquire) != pool->threads - 1) CPU_RELAX();
}

void qrnn_pool_barrier(qrnn_pool *pool) {
    if (pool->threads == 1) return;
    unsigned sense = atomic_load_explicit(&pool->barrier_sense, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->arrived, 1, memory_order_acq_rel) == pool->threads - 1) {
        atomic_store_explicit(&pool->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&pool->barrier_sense, sense + 1, memory_order_release);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&pool->barrier_sense, memory_order_acquire) == sense)
        if (++spins % 1024 == 0) sched_yield(); else CPU_RELAX();
}
